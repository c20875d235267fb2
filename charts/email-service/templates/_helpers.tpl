{{/* Names and labels, after the Helm starter and cert-manager/Bitnami conventions. */}}

{{- define "email-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "email-service.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<component>, within 63 characters. */}}
{{- define "email-service.component" -}}
{{- printf "%s-%s" (include "email-service.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "email-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "email-service.labels" -}}
helm.sh/chart: {{ include "email-service.chart" . }}
{{ include "email-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: email-service
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "email-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "email-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: call with (dict "root" $ "component" "worker"). */}}
{{- define "email-service.componentLabels" -}}
{{ include "email-service.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "email-service.componentSelector" -}}
{{ include "email-service.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "email-service.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the chart creates for secrets given as values. */}}
{{- define "email-service.secretName" -}}
{{- include "email-service.fullname" . -}}
{{- end -}}

{{- define "email-service.jwtSecretName" -}}
{{- default (include "email-service.secretName" .) .Values.jwt.existingSecret -}}
{{- end -}}
{{- define "email-service.jwtSecretKey" -}}
{{- if .Values.jwt.existingSecret -}}{{ .Values.jwt.existingSecretKey }}{{- else -}}jwt_secret{{- end -}}
{{- end -}}

{{- define "email-service.smtpSecretName" -}}
{{- default (include "email-service.secretName" .) .Values.smtp.existingSecret -}}
{{- end -}}
{{- define "email-service.smtpSecretKey" -}}
{{- if .Values.smtp.existingSecret -}}{{ .Values.smtp.existingSecretKey }}{{- else -}}smtp_password{{- end -}}
{{- end -}}
{{- define "email-service.hasSmtpPassword" -}}
{{- if or .Values.smtp.existingSecret .Values.smtp.password -}}true{{- end -}}
{{- end -}}

{{- define "email-service.redisSecretName" -}}
{{- default (include "email-service.secretName" .) .Values.redis.existingSecret -}}
{{- end -}}
{{- define "email-service.redisSecretKey" -}}
{{- if .Values.redis.existingSecret -}}{{ .Values.redis.existingSecretKey }}{{- else -}}redis_password{{- end -}}
{{- end -}}
{{- define "email-service.hasRedisPassword" -}}
{{- if or .Values.redis.existingSecret .Values.redis.password .Values.redis.bundled -}}true{{- end -}}
{{- end -}}

{{/* The bundled Redis password: the value, else the one already in the cluster, else new. */}}
{{- define "email-service.redisPassword" -}}
{{- if .Values.redis.password -}}
{{- .Values.redis.password -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "email-service.secretName" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "redis_password") -}}
{{- index $existing.data "redis_password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "email-service.redisHost" -}}
{{- if .Values.redis.bundled -}}
{{- include "email-service.component" (dict "root" . "component" "redis") -}}
{{- else -}}
{{- required "redis.host is required when redis.bundled is false" .Values.redis.host -}}
{{- end -}}
{{- end -}}

{{- define "email-service.templateNamespaces" -}}
{{- if .Values.config.templateNamespaces -}}
{{- join "," .Values.config.templateNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
Files under /run/secrets, one projected volume: the service reads /run/secrets/<lowercase
name> (jwt_secret, smtp_password, redis_password). Call with (dict "root" $ "jwt" true ...).
*/}}
{{- define "email-service.secretsVolume" -}}
{{- $root := .root -}}
{{- $sources := list -}}
{{- if .jwt -}}
{{- $sources = append $sources (dict "secret" (dict "name" (include "email-service.jwtSecretName" $root) "items" (list (dict "key" (include "email-service.jwtSecretKey" $root) "path" "jwt_secret")))) -}}
{{- end -}}
{{- if and .smtp (include "email-service.hasSmtpPassword" $root) -}}
{{- $sources = append $sources (dict "secret" (dict "name" (include "email-service.smtpSecretName" $root) "items" (list (dict "key" (include "email-service.smtpSecretKey" $root) "path" "smtp_password")))) -}}
{{- end -}}
{{- if include "email-service.hasRedisPassword" $root -}}
{{- $sources = append $sources (dict "secret" (dict "name" (include "email-service.redisSecretName" $root) "items" (list (dict "key" (include "email-service.redisSecretKey" $root) "path" "redis_password")))) -}}
{{- end -}}
- name: secrets
{{- if $sources }}
  projected:
    defaultMode: 0440
    sources:
      {{- toYaml $sources | nindent 6 }}
{{- else }}
  emptyDir: {sizeLimit: 1Mi}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the pods when configuration or chart-made secrets change. */}}
{{- define "email-service.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{- define "email-service.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "email-service.componentSelector" . | nindent 8 }}
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "email-service.componentSelector" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Scheduling and security settings shared by the pods. */}}
{{- define "email-service.podCommon" -}}
{{- $values := index .root.Values .component -}}
serviceAccountName: {{ include "email-service.component" (dict "root" .root "component" .serviceAccount) }}
automountServiceAccountToken: {{ .apiAccess | default false }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

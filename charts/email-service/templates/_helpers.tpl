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
{{- $room := int (sub 62 (len .component)) -}}
{{- $base := include "email-service.fullname" .root | trunc $room | trimSuffix "-" -}}
{{- printf "%s-%s" $base .component -}}
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

{{/* Where every namespaced object goes: `namespace`, else the release's (cert-manager's way). */}}
{{- define "email-service.namespace" -}}
{{- default .Release.Namespace .Values.namespace -}}
{{- end -}}

{{/* The Secret the chart creates for secrets given as values. */}}
{{- define "email-service.secretName" -}}
{{- include "email-service.fullname" . -}}
{{- end -}}

{{/*
Each secret (jwt, smtp, redis) lives in an existing Secret under existingSecretKey, or in the
chart's Secret under the file name the pods read. Call with
(dict "root" $ "secret" "redis" "file" "redis_password").
*/}}
{{- define "email-service.secretRefName" -}}
{{- (index .root.Values .secret).existingSecret | default (include "email-service.secretName" .root) -}}
{{- end -}}

{{- define "email-service.secretRefKey" -}}
{{- $values := index .root.Values .secret -}}
{{- ternary $values.existingSecretKey .file (not (empty $values.existingSecret)) -}}
{{- end -}}

{{- define "email-service.hasSmtpPassword" -}}
{{- if or .Values.smtp.existingSecret .Values.smtp.password -}}true{{- end -}}
{{- end -}}

{{- define "email-service.hasBounceSecret" -}}
{{- if and .Values.bounces.enabled (or .Values.bounces.existingSecret .Values.bounces.secret) -}}true{{- end -}}
{{- end -}}

{{- define "email-service.hasMailtrapWebhookSecret" -}}
{{- if or .Values.mailtrapWebhook.existingSecret .Values.mailtrapWebhook.signingSecret -}}true{{- end -}}
{{- end -}}

{{- define "email-service.hasMailtrapToken" -}}
{{- if or .Values.mailtrap.existingSecret .Values.mailtrap.apiToken -}}true{{- end -}}
{{- end -}}

{{- define "email-service.hasRedisPassword" -}}
{{- if or .Values.redis.existingSecret .Values.redis.password .Values.redis.bundled -}}true{{- end -}}
{{- end -}}

{{/*
The bundled Redis password, for the chart's Secret. Never generated here: a random value would
change on every `helm template` (GitOps tools render without cluster access, so `lookup` finds
nothing) and roll the pods each time. Give it once as a value or in an existing Secret.
*/}}
{{- define "email-service.redisPassword" -}}
{{- $how := "generate one once (openssl rand -hex 24) and keep it in your values or in a Secret" -}}
{{- $message := printf "redis.password or redis.existingSecret is required with the bundled Redis: %s" $how -}}
{{- required $message .Values.redis.password -}}
{{- end -}}

{{/* True when the workers deliver to the bundled Mailpit: enabled, and no relay named. */}}
{{- define "email-service.smtpCatcher" -}}
{{- if and .Values.mailpit.enabled (not .Values.smtp.host) -}}true{{- end -}}
{{- end -}}

{{/* The chart runs a primary/replica/sentinel set instead of the single Redis. */}}
{{- define "email-service.sentinelBundled" -}}
{{- if and .Values.redis.bundled .Values.redis.sentinel.enabled -}}true{{- end -}}
{{- end -}}

{{/* The headless Service of the bundled set: stable names for each node and sentinel. */}}
{{- define "email-service.redisHeadless" -}}
{{- printf "%s-headless" (include "email-service.component" (dict "root" . "component" "redis")) -}}
{{- end -}}

{{/* REDIS_SENTINELS: the bundled set's sentinels by pod name, or the existing ones. */}}
{{- define "email-service.redisSentinels" -}}
{{- if include "email-service.sentinelBundled" . -}}
{{- $name := include "email-service.component" (dict "root" . "component" "redis") -}}
{{- $domain := printf "%s.%s.svc" (include "email-service.redisHeadless" .) (include "email-service.namespace" .) -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.redis.sentinel.nodes) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s:%v" $name $i $domain $.Values.redis.sentinel.port) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- else -}}
{{- if not .Values.redis.sentinel.hosts -}}
{{- fail "redis.sentinel.hosts is required when redis.sentinel.enabled is true and redis.bundled is false (or set redis.bundled=true to run a set)" -}}
{{- end -}}
{{- join "," .Values.redis.sentinel.hosts -}}
{{- end -}}
{{- end -}}

{{/* The sentinels' password reaches the pods: the bundled set's is the Redis password. */}}
{{- define "email-service.hasSentinelPassword" -}}
{{- if and .Values.redis.sentinel.enabled (or (include "email-service.sentinelBundled" .) .Values.redis.sentinel.password .Values.redis.sentinel.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* The Secret and key holding the sentinels' password (see hasSentinelPassword). */}}
{{- define "email-service.sentinelSecretFile" -}}
{{- if include "email-service.sentinelBundled" .root -}}
- secret:
    name: {{ include "email-service.secretRefName" (dict "root" .root "secret" "redis") }}
    items:
      - key: {{ include "email-service.secretRefKey" (dict "root" .root "secret" "redis" "file" "redis_password") }}
        path: redis_sentinel_password
{{- else -}}
{{- $sentinel := .root.Values.redis.sentinel -}}
- secret:
    name: {{ $sentinel.existingSecret | default (include "email-service.secretName" .root) }}
    items:
      - key: {{ ternary $sentinel.existingSecretKey "redis_sentinel_password" (not (empty $sentinel.existingSecret)) }}
        path: redis_sentinel_password
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
{{- include "email-service.namespace" . -}}
{{- end -}}
{{- end -}}

{{/*
Files under /run/secrets, one projected volume: the service reads /run/secrets/<lowercase
name> (jwt_secret, smtp_password, mailtrap_api_token, redis_password). Call with
(dict "root" $ "jwt" true ...); "smtp" true (the workers) also brings the Mailtrap token,
"dkim" true (the workers) the DKIM keys as dkim/<domain>/<selector>.pem, "unsubscribe" true
(ingress and workers) the unsubscribe token secrets.
*/}}
{{- define "email-service.secretsVolume" -}}
{{- $root := .root -}}
{{- $jwt := .jwt -}}
{{- $smtp := and .smtp (include "email-service.hasSmtpPassword" $root) -}}
{{- $redis := include "email-service.hasRedisPassword" $root -}}
{{- $mailtrap := and .smtp (include "email-service.hasMailtrapToken" $root) -}}
{{- $sentinel := include "email-service.hasSentinelPassword" $root -}}
{{- $dkim := and .dkim $root.Values.dkim.keys -}}
{{- $unsubscribe := and .unsubscribe $root.Values.unsubscribe.publicBaseUrl (or $root.Values.unsubscribe.secrets $root.Values.unsubscribe.existingSecret) -}}
{{- $bounce := and .bounce (include "email-service.hasBounceSecret" $root) -}}
{{- $webhook := and .webhook (include "email-service.hasMailtrapWebhookSecret" $root) -}}
- name: secrets
{{- if or $jwt $smtp $redis $mailtrap $sentinel $dkim $unsubscribe $bounce $webhook }}
  projected:
    defaultMode: 0440
    sources:
      {{- if $jwt }}
      {{- include "email-service.secretFile" (dict "root" $root "secret" "jwt" "file" "jwt_secret") | nindent 6 }}
      {{- end }}
      {{- if $smtp }}
      {{- include "email-service.secretFile" (dict "root" $root "secret" "smtp" "file" "smtp_password") | nindent 6 }}
      {{- end }}
      {{- if $mailtrap }}
      {{- include "email-service.secretFile" (dict "root" $root "secret" "mailtrap" "file" "mailtrap_api_token") | nindent 6 }}
      {{- end }}
      {{- if $redis }}
      {{- include "email-service.secretFile" (dict "root" $root "secret" "redis" "file" "redis_password") | nindent 6 }}
      {{- end }}
      {{- if $sentinel }}
      {{- include "email-service.sentinelSecretFile" (dict "root" $root) | nindent 6 }}
      {{- end }}
      {{- if $dkim }}
      {{- include "email-service.dkimKeys" $root | nindent 6 }}
      {{- end }}
      {{- if $unsubscribe }}
      {{- include "email-service.secretFile" (dict "root" $root "secret" "unsubscribe" "file" "unsubscribe_secrets") | nindent 6 }}
      {{- end }}
      {{- if $bounce }}
      {{- include "email-service.secretFile" (dict "root" $root "secret" "bounces" "file" "bounce_secret") | nindent 6 }}
      {{- end }}
      {{- if $webhook }}
      {{- include "email-service.secretFile" (dict "root" $root "secret" "mailtrapWebhook" "file" "mailtrap_webhook_secret") | nindent 6 }}
      {{- end }}
{{- else }}
  emptyDir: {sizeLimit: 1Mi}
{{- end }}
{{- end -}}

{{/* One source of the secrets volume, as /run/secrets/<file>: call like secretRefName. */}}
{{- define "email-service.secretFile" -}}
- secret:
    name: {{ include "email-service.secretRefName" . }}
    items:
      - key: {{ include "email-service.secretRefKey" . }}
        path: {{ .file }}
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


{{/* The Ed25519 selector: dkim.ed25519Selector, else <selector>-ed25519 (as DKIM_ED25519_SELECTOR). */}}
{{- define "email-service.dkimEd25519Selector" -}}
{{- .Values.dkim.ed25519Selector | default (printf "%s-ed25519" .Values.dkim.selector) -}}
{{- end -}}

{{/* The DKIM keys of dkim.existingSecret as /run/secrets/dkim/<domain>/<selector>.pem (workers). */}}
{{- define "email-service.dkimKeys" -}}
{{- $ed := include "email-service.dkimEd25519Selector" . -}}
{{- if not .Values.dkim.existingSecret }}
{{- fail "dkim.existingSecret is required when dkim.keys lists keys" }}
{{- end }}
- secret:
    name: {{ .Values.dkim.existingSecret }}
    items:
      {{- range .Values.dkim.keys }}
      {{- if not (or (eq .selector $.Values.dkim.selector) (eq .selector $ed)) }}
      {{- fail (printf "dkim.keys: %s's selector %q is neither dkim.selector nor the Ed25519 selector %q" .domain .selector $ed) }}
      {{- end }}
      - key: {{ .secretKey | default (printf "%s.%s.pem" .domain .selector) }}
        path: dkim/{{ lower .domain }}/{{ .selector }}.pem
      {{- end }}
{{- end -}}

{{/* DKIM_* for the workers (the only pods with the keys). */}}
{{- define "email-service.dkimEnv" -}}
{{- if .Values.dkim.keys }}
{{- $domains := list }}
{{- range .Values.dkim.keys }}{{ $domains = append $domains (lower .domain) }}{{ end }}
- name: DKIM_DOMAINS
  value: {{ $domains | uniq | join "," | quote }}
- name: DKIM_SELECTOR
  value: {{ .Values.dkim.selector | quote }}
- name: DKIM_ED25519_SELECTOR
  value: {{ include "email-service.dkimEd25519Selector" . | quote }}
- name: DKIM_KEYS_DIR
  value: /run/secrets/dkim
- name: DKIM_SUBDOMAINS
  value: {{ .Values.dkim.subdomains | quote }}
{{- end }}
{{- end -}}

{{/* The worker component of a stream: "worker" for transactional, else "worker-<stream>". */}}
{{- define "email-service.workerComponent" -}}
{{- if eq . "transactional" -}}worker{{- else -}}{{ printf "worker-%s" . }}{{- end -}}
{{- end -}}

{{/* The worker components of every configured stream, as a YAML list. */}}
{{- define "email-service.workerComponents" -}}
{{- range $stream, $_ := .Values.worker.streams }}
- {{ include "email-service.workerComponent" $stream }}
{{- end }}
{{- end -}}

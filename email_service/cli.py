"""``email-service``: one command, a subcommand per process or tool.

Help text is plain text (no RST): it is what ``--help`` prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailcore.config import ConfigError, Settings
from mailcore.streams import STREAM_NAMES, TRANSACTIONAL


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"email-service: configuration error: {exc}", file=sys.stderr)
        return 2
    return result


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` after every option that has a real default (not for flags,
    unset options or defaults the help text already explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("email-service")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="email-service", formatter_class=_HelpFormatter,
        description="Transactional email: one command, a subcommand per process or tool. "
                    "Every setting is an environment variable (see the README); options below "
                    "only choose what to run.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, parent: Any = sub) -> argparse.ArgumentParser:
        created: argparse.ArgumentParser = parent.add_parser(
            name, help=text, description=text[0].upper() + text[1:] + ".",
            formatter_class=_HelpFormatter)
        return created

    api = command("api", "run the HTTP ingress (and the Redis event listener)")
    # Defaults of options that have a variable come from Settings (None here: not given).
    api.add_argument("--host", help="address to listen on (default: HOST, or 0.0.0.0)")
    api.add_argument("--port", type=int, help="port to listen on (default: PORT, or 8000)")
    api.add_argument("--processes", type=int,
                     help="ingress processes sharing the port (default: HTTP_PROCESSES, or 1)")
    api.add_argument("--reuse-port", action="store_true",
                     help="bind with SO_REUSEPORT, beside other processes on the same port "
                          "(what --processes gives the processes it starts; default: off)")
    api.set_defaults(run=_run_api)

    worker = command("worker", "run Dramatiq worker processes that deliver mail")
    worker.add_argument("--processes", type=int,
                        help="worker processes (default: WORKER_PROCESSES, or 2)")
    worker.add_argument("--threads", type=int,
                        help="threads per process; each keeps one SMTP session open, so a "
                             "distant relay needs many (default: WORKER_THREADS, or 24)")
    worker.set_defaults(run=_run_worker)

    hooks = command("webhooks", "run the webhook fan-out and delivery processes")
    hooks.add_argument("--processes", type=int,
                       help="processes (default: WEBHOOKS_PROCESSES, or 1)")
    hooks.add_argument("--threads", type=int,
                       help="delivery threads per process (default: WEBHOOKS_THREADS, or 16)")
    hooks.set_defaults(run=_run_webhooks)

    bounces = command("bounces", "receive delivery reports (bounces, complaints) for "
                      "BOUNCE_DOMAIN by SMTP or LMTP")
    bounces.add_argument("--host", help="address to listen on (default: BOUNCES_HOST)")
    bounces.add_argument("--port", type=int, help="SMTP/LMTP port (default: BOUNCES_PORT)")
    bounces.add_argument("--http-port", type=int,
                         help="port of /health, /ready and /metrics (default: BOUNCES_HTTP_PORT)")
    bounces.set_defaults(run=_run_bounces)

    dev = command("dev", "run the whole stack locally, catching mail in a folder")
    dev.add_argument("--port", type=int, default=8000, help="port of the local ingress")
    dev.add_argument("--outbox", type=Path, default=Path("outbox"),
                     help="folder the caught emails are written to (.eml and .html)")
    dev.add_argument("--sync", type=Path, action="append", default=None, metavar="PATH",
                     help="template folders / EmailTemplate YAML to sync into the store and "
                          "watch (default: templates/ and examples/emailtemplates/ if present)")
    dev.add_argument("--env-file", type=Path, default=Path(".email-service-dev.env"),
                     help="where to write the dev stack's settings and tokens (REDIS_URL, "
                          "JWT_SECRET, TOKEN, ADMIN_TOKEN), to source in a shell")
    dev.set_defaults(run=_run_dev)

    render = command("render", "render a named template, an EmailTemplate YAML file or an "
                               ".mjml/.html file")
    render.add_argument("template", help="a template name, or a path to an EmailTemplate .yaml "
                                         "file (layouts and partials from the YAML files beside "
                                         "it) or an .mjml or .html file")
    render.add_argument("--name", help="which EmailTemplate of a YAML file holding several")
    render.add_argument("--png", type=Path,
                        help="also write a screenshot of the HTML (needs a headless Chromium)")
    render.add_argument("--chromium", type=Path,
                        help="the Chromium for --png (default: chromium, chromium-browser or "
                             "google-chrome on the PATH)")
    render.add_argument("--data", type=Path,
                        help="JSON file with the template data (default: its sample data)")
    render.add_argument("--out", type=Path, help="write here instead of stdout")
    render.add_argument("--part", choices=("html", "text", "subject"), default="html",
                        help="which part of the email to print")
    render.add_argument("--locale", help="render this locale's variant (default: the template's "
                                         "default language)")
    render.set_defaults(run=_run_render)

    dlq = command("dlq", "inspect and act on dead letters")
    dlq.add_argument("--stream", choices=STREAM_NAMES, default=TRANSACTIONAL,
                     help="whose queue's dead letters (default: transactional)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = command("list", "list dead letters, newest first", dlq_sub)
    dlq_list.add_argument("--limit", type=int, default=100, help="list at most this many")
    dlq_show = command("show", "show one dead letter with its status history", dlq_sub)
    dlq_show.add_argument("id", help="the message id (as the send answered it)")
    dlq_retry = command("retry", "requeue one dead letter (keeping its id) or --all", dlq_sub)
    target = dlq_retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", help="the message id to requeue")
    target.add_argument("--all", action="store_true", help="requeue every dead letter")
    dlq_purge = command("purge", "delete every dead letter", dlq_sub)
    dlq_purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    dlq.set_defaults(run=_run_dlq)

    token = command("token", "mint a JWT signed with JWT_SECRET (for testing)")
    token.add_argument("--subject", default="dev", help="the token's subject: who is calling")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--scope", help="space-separated scopes (e.g. 'email:send email:admin')")
    token.set_defaults(run=_run_token)

    publish = command("publish-reset", "publish a password-reset event on Redis, as the "
                      "original services did (EVENTS_CHANNEL on REDIS_URL)")
    publish.add_argument("email", help="the recipient")
    publish.add_argument("code", help="the reset code")
    publish.set_defaults(run=_run_publish_reset)

    probe = command("probe", "liveness/readiness check for Kubernetes probes")
    probe.add_argument("target", choices=("worker",), help="what to check")
    probe.add_argument("--ready", action="store_true",
                       help="readiness: also require that Redis answers")
    probe.add_argument("--max-age", type=float, default=30.0, metavar="SECONDS",
                       help="a worker process silent this long is frozen or dead")
    probe.add_argument("--stall", type=float, default=60.0, metavar="SECONDS",
                       help="with Redis up, a consumer idle this long is wedged")
    probe.set_defaults(run=_run_probe)

    operator = command("operator", "run the EmailTemplate operator (kopf)")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; default: TEMPLATE_NAMESPACES)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch EmailTemplates in every namespace")
    operator.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                          help="kopf's liveness endpoint (default: %(default)s)")
    operator.add_argument("--handlers", type=Path, help="the kopf handlers file (default: found "
                          "beside the package or via EMAIL_SERVICE_OPERATOR_HANDLERS)")
    operator.add_argument("--verbose", action="store_true", help="kopf's verbose logging")
    operator.set_defaults(run=_run_operator)

    sync = command("sync", "compile template folders and EmailTemplate YAML files into the "
                   "template store (dev, no cluster); --watch re-syncs on change")
    sync.add_argument("paths", nargs="+", type=Path,
                      help="template folders (like templates/) and EmailTemplate YAML files/dirs")
    sync.add_argument("--namespace", help="namespace of templates that name none "
                      "(default: the first of TEMPLATE_NAMESPACES)")
    sync.add_argument("--watch", action="store_true", help="keep running; re-sync on changes")
    sync.set_defaults(run=_run_sync)
    return parser


#: Seconds an ingress process has after SIGTERM to finish the requests in flight.
_GRACEFUL_SECONDS = 25


def _run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from mailcore.logs import configure_logging
    from mailcore.telemetry import configure_tracing
    from service import processes
    from service.app import create_app
    from service.server import guarded_protocol

    settings = Settings.from_env()
    configure_logging(settings.telemetry)
    host, port = args.host or settings.http.host, args.port or settings.http.port
    count = settings.http.processes if args.processes is None else args.processes
    if not 1 <= count <= 64:
        raise ConfigError(f"--processes: {count} is not a number of processes (1 to 64)")
    if count > 1 and not args.reuse_port:
        # A supervisor of `count` copies of this command sharing the port (service/processes).
        from mailcore.metrics_dir import prepare_metrics_dir

        prepare_metrics_dir("ingress")
        return processes.Supervisor(processes.child_command(host, port), count,
                                    grace_seconds=_GRACEFUL_SECONDS + 2).run()
    configure_tracing("api", settings.telemetry)
    app = create_app(settings, freeze_heap=True)
    # Slow or greedy clients are bounded here, before the app: the head must arrive within
    # HTTP_HEADER_TIMEOUT_SECONDS and HTTP_MAX_HEADER_BYTES (the body's own timeout is the
    # app's), idle keep-alive connections close, and past HTTP_MAX_CONCURRENCY uvicorn
    # answers 503 instead of queueing without end.
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SECONDS, server_header=False,
        http=guarded_protocol(settings.http.header_timeout_seconds,
                              settings.http.max_header_bytes),
        timeout_keep_alive=settings.http.keepalive_seconds,
        h11_max_incomplete_event_size=settings.http.max_header_bytes,
        limit_concurrency=settings.http.max_concurrency)
    server = uvicorn.Server(config)
    # One of several processes: its own SO_REUSEPORT socket on the shared port.
    sockets = [processes.listening_socket(host, port)] if args.reuse_port else None
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=sockets)
    return 0 if server.started else 3  # 3: uvicorn's "could not start"


def _run_bounces(args: argparse.Namespace) -> int:
    import asyncio

    from bounces.server import serve
    from mailcore.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.telemetry)
    asyncio.run(serve(settings, host=args.host, port=args.port, http_port=args.http_port))
    return 0


def _run_worker(args: argparse.Namespace) -> int:
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    from mailcore.logs import configure_logging
    from workers.heartbeat import prepare_directory

    settings = Settings.from_env()  # fail here with one line rather than in every child
    from mailcore.dkim_signing import signer_for

    signer_for(settings)  # DKIM keys too (each worker process then reads them once)
    configure_logging(settings.telemetry)
    prepare_directory(settings.worker.heartbeat_dir)
    if settings.worker.metrics_port:
        # prometheus_client picks its multiprocess mode when first imported, and the Dramatiq
        # processes are forked from this one: name the folder before importing it.
        from mailcore.metrics_dir import prepare_metrics_dir

        prepare_metrics_dir("worker")  # named before prometheus_client is imported (below)
        from workers.exposition import serve_worker_metrics

        serve_worker_metrics(settings.worker.metrics_port, settings.redis.where,
                             list(settings.queues.values()),
                             host=settings.worker.metrics_host)
    dramatiq_args = make_argument_parser().parse_args([  # type: ignore[no-untyped-call]
        "workers.actors", "--processes", str(args.processes or settings.worker.processes),
        "--threads", str(args.threads or settings.worker.threads),
        "--skip-logging", "--worker-shutdown-timeout", str(settings.worker.shutdown_timeout_ms),
        # Only the queues of this worker's streams (the chart runs one Deployment per stream).
        "--queues", *[settings.queues[stream] for stream in settings.streams.worker_streams],
    ])
    code = dramatiq_main(dramatiq_args)  # type: ignore[no-untyped-call]
    return int(code or 0)


def _run_webhooks(args: argparse.Namespace) -> int:
    from workers.webhook_command import run_webhooks

    return run_webhooks(args.processes, args.threads)


def _run_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    sync = args.sync if args.sync is not None else [
        path for path in (Path("templates"), Path("examples/emailtemplates")) if path.exists()]
    return run_dev(port=args.port, outbox=args.outbox, sync=sync, env_file=args.env_file)


def _run_render(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mailcore.locales import check_locale, lookup_chain
    from mailcore.rendering import TemplateError, TemplateSource
    from mailcore.templates import TemplateRegistry, builtin_templates_dir

    settings = Settings.from_env()
    path = Path(args.template)
    registry = TemplateRegistry.from_dir(builtin_templates_dir(settings.templates.dir))
    if path.suffix in {".yaml", ".yml"}:
        from .preview import load_resource

        try:
            source = load_resource(path, args.name)
        except TemplateError as exc:
            return _one_line_error(exc.reason, str(exc), path)
        except OSError as exc:
            return _one_line_error("Unreadable", exc.strerror or str(exc), path, code=2)
        registry = TemplateRegistry({source.name: source})
        name = source.name
    elif path.suffix in {".mjml", ".html"} and path.is_file():
        body = path.read_text(encoding="utf-8")
        source = TemplateSource(
            name=path.stem, subject=path.stem,
            mjml=body if path.suffix == ".mjml" else None,
            html=body if path.suffix == ".html" else None,
        )
        registry = TemplateRegistry({source.name: source})
        name = source.name
    else:
        name = args.template
    template = registry.get(name)
    if template is None:
        print(f"email-service: no template or file named {name!r} "
              f"(templates: {', '.join(registry.names())})", file=sys.stderr)
        return 2
    locale = None
    if args.locale is not None:
        try:
            locale = check_locale(args.locale)
        except ValueError as exc:
            return _one_line_error("InvalidLocale", str(exc), None, code=2)
    try:
        data = json.loads(args.data.read_text()) if args.data else dict(template.source.sample_data)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _one_line_error("InvalidData", f"cannot read --data: {exc}", None, code=2)
    if not isinstance(data, dict):
        return _one_line_error("InvalidData", "--data must hold a JSON object", None, code=2)
    if locale is not None and args.data is None:
        # The locale's own sample data, when it has some (as the operator test-renders it).
        entries = {check_locale(tag): o for tag, o in template.source.locales.items()}
        override = next((entries[tag] for tag in lookup_chain(locale) if tag in entries), None)
        if override is not None and override.sample_data is not None:
            data = dict(override.sample_data)
    try:
        template.validate_data(data)
        rendered = template.render(data, brand=asdict(settings.brand), locale=locale)
    except TemplateError as exc:
        return _one_line_error(exc.reason, str(exc), None, code=1)
    output = getattr(rendered, args.part)
    try:
        if args.out:
            args.out.write_text(output, encoding="utf-8")
        else:
            sys.stdout.write(output if output.endswith("\n") else output + "\n")
        if args.png:
            from .preview import screenshot

            screenshot(rendered.html, args.png, browser_path=args.chromium)
    except RuntimeError as exc:
        return _one_line_error("Screenshot", str(exc), None, code=1)
    except OSError as exc:
        return _one_line_error("Unwritable", str(exc), None, code=2)
    return 0


def _one_line_error(reason: str, message: str, path: Path | None, *, code: int = 1) -> int:
    """``email-service: <file>: <Reason>: <message>`` as one line on stderr (no traceback)."""
    text = " ".join(message.split())
    where = f"{path}: " if path is not None and not text.startswith(path.name) else ""
    print(f"email-service: {where}{reason}: {text[:2000]}", file=sys.stderr)
    return code


def _run_dlq(args: argparse.Namespace) -> int:
    from mailcore.deadletters import DeadLetters
    from mailcore.redisclient import sync_client

    settings = Settings.from_env()
    dead = DeadLetters(sync_client(settings.redis.where, "admin"),
                       settings.queues[args.stream], settings.redis.key_prefix,
                       settings.limits.status_retention_seconds,
                       emit_events=settings.webhooks.enabled)
    if args.dlq_command == "list":
        letters = dead.list(args.limit)
        if not letters:
            print("no dead letters")
        for letter in letters:
            last = letter.last_error or {}
            error = " ".join(str(part) for part in (last.get("code"), last.get("message")) if part)
            print(f"{letter.id}  {letter.template}  {','.join(letter.recipients)}  "
                  f"attempts={letter.attempts}  {error}")
        return 0
    if args.dlq_command == "show":
        found = dead.show(args.id)
        if found is None:
            print(f"email-service: no dead letter {args.id!r}", file=sys.stderr)
            return 1
        print(json.dumps(found, indent=2, default=str))
        return 0
    if args.dlq_command == "retry":
        if args.all:
            print(f"requeued {dead.retry_all()} message(s)")
            return 0
        if not dead.retry(args.id):
            print(f"email-service: no dead letter {args.id!r}", file=sys.stderr)
            return 1
        print(f"requeued {args.id}")
        return 0
    if not args.yes and input("Delete every dead letter? [y/N] ").strip().lower() != "y":
        return 1
    print(f"purged {dead.purge()} message(s)")
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    import time

    from workers.heartbeat import problems, read_reports

    settings = Settings.from_env()
    found = problems(read_reports(settings.worker.heartbeat_dir), now=time.time(),
                     ready=args.ready, max_age=args.max_age, stall_after=args.stall)
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print("ready" if args.ready else "live")
    return 1 if found else 0


def _run_token(args: argparse.Namespace) -> int:
    from mailcore.tokens import mint_token

    settings = Settings.from_env()
    if not settings.auth.secret:
        raise ConfigError("JWT_SECRET: required to mint a token")
    extra = {"scope": args.scope} if args.scope else {}
    print(mint_token(settings.auth.secret, subject=args.subject, ttl_seconds=args.ttl,
                     audience=settings.auth.audience, issuer=settings.auth.issuer, **extra))
    return 0


def _run_publish_reset(args: argparse.Namespace) -> int:
    import time

    from mailcore.redisclient import sync_client

    settings = Settings.from_env()
    event = {"email": args.email, "code": args.code, "timestamp": int(time.time())}
    with sync_client(settings.redis.where, "admin") as client:
        listeners = int(client.publish(settings.events.channel, json.dumps(event)))
    # Pub/Sub keeps nothing: with no ingress subscribed the event is gone, so say so.
    print(f"published to {settings.events.channel}: {listeners} listener(s)")
    return 0 if listeners else 1


def _operator_handlers(explicit: Path | None, configured: Path | None) -> Path:
    """The kopf handlers file: --handlers, EMAIL_SERVICE_OPERATOR_HANDLERS, or the source tree."""
    candidates = [path for path in (explicit, configured) if path is not None]
    here = Path(__file__).resolve().parent
    candidates += [here / "_operator" / "handlers.py", here.parent / "operator" / "handlers.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError("EMAIL_SERVICE_OPERATOR_HANDLERS: operator/handlers.py not found "
                      f"(looked at {', '.join(map(str, candidates))})")


def _run_operator(args: argparse.Namespace) -> int:
    from kopf.cli import main as kopf_main

    settings = Settings.from_env()
    handlers = _operator_handlers(args.handlers, settings.operator.handlers)
    kopf_args = ["run", str(handlers), "--standalone", "--liveness", args.liveness]
    namespaces = args.namespace or list(settings.templates.namespaces)
    if args.all_namespaces or (not args.namespace and "*" in namespaces):
        kopf_args.append("--all-namespaces")
    else:
        for namespace in namespaces:
            kopf_args += ["--namespace", namespace]
    if args.verbose:
        kopf_args.append("--verbose")
    kopf_main.main(args=kopf_args, prog_name="email-service operator", standalone_mode=False)
    return 0


def _run_sync(args: argparse.Namespace) -> int:
    from mailcore.sandbox_process import ProcessLimits, TemplateSandbox
    from mailcore.store import TemplateStoreWriter
    from mailcore.template_history import collect_garbage
    from mailcore.template_resources import collect_parts, collect_templates, describe_error

    settings = Settings.from_env()
    # Templates are untrusted: compiled and test-rendered in a child that may crash, not here.
    sandbox = TemplateSandbox(ProcessLimits.from_settings(
        settings, settings.operator.render_timeout_seconds))
    namespace = args.namespace or next(
        (ns for ns in settings.templates.namespaces if ns != "*"), "default")
    writer = TemplateStoreWriter.from_settings(settings)
    written: set[str] = set()

    def sync_once() -> int:
        parts, part_refusals = collect_parts(args.paths, namespace)
        for key, (part, origin) in sorted(parts.items()):
            state = "stored" if writer.put_part(key, part, origin) else "unchanged"
            print(f"{key}\tReady=True\tCompiled\t{part.kind} version {part.version} ({state})",
                  flush=True)
        valid, refused = collect_templates(
            args.paths, namespace, sender_allowed=settings.sender.domain_allowed,
            compiler=sandbox.compile,
            parts=lambda key: parts[key][0] if key in parts else writer.get_part(key))
        refused = [*part_refusals, *refused]
        for key, (source, origin) in sorted(valid.items()):
            changed = writer.put(key, source, origin)
            state = "stored" if changed else "unchanged"
            print(f"{key}\tReady=True\tCompiled\tversion {source.version} ({state})", flush=True)
        for refusal in refused:
            error = refusal.error
            print(f"{refusal.where}\tReady=False\t{error.reason}\t{describe_error(error)}",
                  flush=True)
        # A refused template keeps its last good version (as with the operator); a template
        # whose file is gone is removed. A file that does not parse at all removes nothing.
        if not any(refusal.key is None for refusal in refused):
            kept = set(valid) | {refusal.key for refusal in refused if refusal.key}
            for key in sorted(written - kept):
                if writer.delete(key):
                    print(f"{key}\tremoved", flush=True)
            written.difference_update(written - kept)
        written.update(valid)
        # Old versions nothing needs any more (README: Versions, history and rollback).
        collect_garbage(writer.client, settings.redis.key_prefix,
                        keep=settings.templates.history_versions)
        return 1 if refused else 0

    try:
        code = sync_once()
        if not args.watch:
            return code
        from watchfiles import watch

        print(f"email-service sync: watching {', '.join(map(str, args.paths))}", flush=True)
        for _changes in watch(*args.paths):
            sync_once()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        sandbox.close()
        writer.close()


if __name__ == "__main__":
    sys.exit(main())

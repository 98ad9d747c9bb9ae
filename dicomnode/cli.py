"""The ``dicomnode`` command: thin wrappers over the stages."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dicomnode import __version__
from dicomnode.config import Settings, load_config
from dicomnode.errors import ConfigError, DicomNodeError, SendError
from dicomnode.jobs import JobState, SQLiteJobStore

CONFIG_ENV = "DICOMNODE_CONFIG"


def _load(path: str | None) -> Settings:
    chosen = path or os.environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError(f"no configuration file: pass -c FILE or set {CONFIG_ENV}")
    return load_config(chosen)


def _open_store(settings: Settings) -> SQLiteJobStore:
    if not settings.database_path.exists():
        raise DicomNodeError(f"no job store at {settings.database_path} (has the node run yet?)")
    return SQLiteJobStore(settings.database_path)


def _fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


# -- commands ---------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node until SIGTERM."""
    from dicomnode.service import Node, configure_logging

    settings = _load(args.config)
    configure_logging(settings.logging.level)
    for warning in settings.warnings():
        logging.getLogger("dicomnode").warning("config: %s", warning)
    Node(settings).serve_forever()
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a configuration file."""
    settings = load_config(args.file)
    for warning in settings.warnings():
        print(f"warning: {warning}")
    print(f"{args.file}: OK")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """C-STORE files to a peer over one association."""
    from tqdm import tqdm

    from dicomnode.export import SendReport, collect_files, send_files

    host, sep, port_text = args.to.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        print(f"error: --to must be HOST:PORT, got {args.to!r}", file=sys.stderr)
        return 2
    report = SendReport()
    files = collect_files([Path(p) for p in args.paths], report)
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not files:
        print("error: nothing to send", file=sys.stderr)
        return 2
    with tqdm(total=len(files), unit="img", disable=args.quiet) as bar:

        def advance(_item: object, _status: int) -> None:
            bar.update(1)

        send_files(
            files,
            host,
            int(port_text),
            args.aet,
            args.calling_aet,
            report=report,
            on_sent=advance,
            timeout=args.timeout,
        )
    for path, reason in report.failed:
        print(f"failed {path}: {reason}", file=sys.stderr)
    print(f"sent {len(report.sent)}, failed {len(report.failed)}, skipped {len(report.skipped)}")
    return 0 if not report.failed else 1


def cmd_studies(args: argparse.Namespace) -> int:
    """List the studies the job store knows."""
    store = _open_store(_load(args.config))
    try:
        rows = [
            [
                s.study_instance_uid,
                s.modalities,
                str(s.series_count),
                str(s.instance_count),
                str(s.duplicate_count),
                str(s.rounds),
                str(s.latest_state),
                _fmt_time(s.first_received_at),
                _fmt_time(s.last_received_at),
            ]
            for s in store.studies()
        ]
    finally:
        store.close()
    headers = ["STUDY UID", "MOD", "SERIES", "INST", "DUP", "ROUNDS", "STATE", "FIRST", "LAST"]
    print(_table(headers, rows))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """List jobs, or show one job's history."""
    store = _open_store(_load(args.config))
    try:
        if args.job_id is not None:
            job = store.get_job(args.job_id)
            print(
                f"job {job.id}: {job.kind} round {job.round} of study {job.study_instance_uid}, "
                f"{job.instance_count} instance(s), now {job.state}"
            )
            history = store.history(job.id)
            rows = []
            for i, step in enumerate(history):
                until = history[i + 1].at if i + 1 < len(history) else None
                spent = "-" if until is None else _fmt_duration(until - step.at)
                rows.append([_fmt_time(step.at), str(step.to_state), spent, step.reason or ""])
            print(_table(["AT", "STATE", "TIME IN STATE", "REASON"], rows))
            return 0
        state = JobState(args.state) if args.state else None
        jobs = store.jobs(state=state, study_instance_uid=args.study)
        now = time.time()
        rows = [
            [
                str(j.id),
                j.kind,
                j.study_instance_uid,
                str(j.round),
                str(j.state),
                str(j.instance_count),
                _fmt_time(j.opened_at),
                _fmt_duration(max(0.0, now - j.updated_at)),
                j.reason or "",
            ]
            for j in jobs
        ]
    finally:
        store.close()
    headers = ["ID", "KIND", "STUDY UID", "ROUND", "STATE", "INST", "OPENED", "IN STATE", "REASON"]
    print(_table(headers, rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dicomnode``."""
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help=f"the node's YAML file (default: ${CONFIG_ENV})")

    serve = sub.add_parser("serve", help="run the node")
    with_config(serve)
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)

    send = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer")
    send.add_argument("paths", nargs="+", metavar="PATH")
    send.add_argument("--to", required=True, metavar="HOST:PORT")
    send.add_argument("--aet", required=True, help="the peer's AE title (called AE)")
    send.add_argument("--calling-aet", default="DICOMNODE_SCU", help="our AE title")
    send.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    send.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    studies = sub.add_parser("studies", help="list received studies")
    with_config(studies)
    studies.set_defaults(func=cmd_studies)

    jobs = sub.add_parser("jobs", help="list jobs, or show one job's history")
    with_config(jobs)
    jobs.add_argument("job_id", nargs="?", type=int, help="show this job's transitions")
    jobs.add_argument("--state", choices=[s.value for s in JobState])
    jobs.add_argument("--study", metavar="STUDY_UID")
    jobs.set_defaults(func=cmd_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if args.command == "config" else 2
    except SendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DicomNodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result

"""The ``dicomnode`` command: thin wrappers over the admin layer and the service."""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dicomnode import __version__
from dicomnode.admin import Admin, AuditRow, RunDetail
from dicomnode.config import Settings, load_config
from dicomnode.errors import ConfigError, DicomNodeError, SendError, UserError
from dicomnode.jobs import AuditEvent, JobState

CONFIG_ENV = "DICOMNODE_CONFIG"


def _load(path: str | None) -> Settings:
    chosen = path or os.environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError(f"no configuration file: pass -c FILE or set {CONFIG_ENV}")
    return load_config(chosen)


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
    """Run the node until SIGTERM; refuse to start when a rule cannot work."""
    from dicomnode.runner.requirements import setup_problems
    from dicomnode.service import Node, configure_logging

    settings = _load(args.config)
    configure_logging(settings.logging.level, settings.logging.format)
    problems = setup_problems(settings)
    if problems:
        raise ConfigError(
            f"{args.config or os.environ.get(CONFIG_ENV)}: the node cannot start: "
            "its rules route to pipelines that cannot run here",
            problems,
        )
    for warning in settings.warnings():
        logging.getLogger("dicomnode").warning("config: %s", warning)
    Node(settings, Path(args.config or os.environ[CONFIG_ENV])).serve_forever()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker for some pipelines until SIGTERM (``runner.executor: celery``)."""
    import socket

    from dicomnode.runner.requirements import served_problems
    from dicomnode.service import build_celery_worker, configure_logging

    settings = _load(args.config)
    configure_logging(settings.logging.level)
    pipelines = tuple(dict.fromkeys(p.strip() for p in args.pipelines.split(",") if p.strip()))
    name = args.name or f"dicomnode-{os.getpid()}@{socket.gethostname()}"
    worker = build_celery_worker(settings, pipelines, name)
    problems = served_problems(settings, pipelines)
    if problems:
        raise ConfigError("the worker cannot start", problems)
    worker.start_pools()
    worker.run()
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a configuration file, and that every pipeline its rules route to
    is installed and has what it needs (model manifests and weights, a bundle)."""
    from dicomnode.runner.requirements import setup_problems

    settings = load_config(args.file)
    problems = setup_problems(settings)
    if problems:
        raise ConfigError(f"{args.file}: invalid configuration", problems)
    for warning in settings.warnings():
        print(f"warning: {warning}")
    if not settings.runner.enabled:
        print(
            "note: runner.enabled is false: the models and bundles of the routed pipelines "
            "are checked where they run"
        )
    elif settings.runner.executor == "celery":
        print(
            "note: runner.executor is celery: each dicomnode worker checks the models and "
            "bundles of the pipelines it serves when it starts"
        )
    print(f"{args.file}: OK")
    return 0


def cmd_models_check(args: argparse.Namespace) -> int:
    """Load every configured model, verify its SHA-256, run it once on a synthetic
    input of its declared shape and print what was loaded; 1 when one cannot run."""
    import contextlib
    import json

    from dicomnode.runner.models_check import check_models

    settings = _load(args.config)
    # what libraries print while loading (nnU-Net does) goes to stderr: stdout is the report
    with contextlib.redirect_stdout(sys.stderr):
        checks = check_models(settings, args.device)
    if args.json:
        print(json.dumps([c.as_json() for c in checks], indent=2))
        return 0 if all(c.ok for c in checks) else 1
    if not checks:
        print("no pipeline is routed to or configured")
    for check in checks:
        print(f"pipeline {check.pipeline}: {'OK' if check.ok else 'FAILED'}")
        if check.rules:
            print(f"  rules       {', '.join(check.rules)}")
        for model in check.models:
            print(f"  model       {model['name']} {model['version']} sha256 {model['sha256']}")
        report = check.report
        if report is not None:
            print(f"  parameters  {report.parameters:,}")
            print(f"  device      {report.device}")
            print(f"  input       {report.input_contract}")
            print(f"  labels      {'; '.join(report.labels)}")
            print(f"  test run    {report.output} in {report.seconds:.3f} s")
        elif check.ok:
            print(f"  device      {check.device}")
        for note in check.notes:
            print(f"  note        {note}")
        if check.problem is not None:
            print(f"  problem     {check.problem}")
    return 0 if all(c.ok for c in checks) else 1


def cmd_send(args: argparse.Namespace) -> int:
    """C-STORE files to a peer, each in its own transfer syntax where the peer takes it."""
    from tqdm import tqdm

    from dicomnode.export import SendReport, collect_files, send_files

    host, sep, port_text = args.to.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        print(f"error: --to must be HOST:PORT, got {args.to!r}", file=sys.stderr)
        return 2
    tls = _send_tls(args, host)
    report = SendReport()
    files = collect_files([Path(p) for p in args.paths], report)
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not files:
        print("error: nothing to send", file=sys.stderr)
        return 2
    try:
        with tqdm(total=len(files), unit="img", disable=args.quiet) as bar:

            def advance(_item: object, _status: int | None) -> None:
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
                tls=tls,
            )
    finally:
        # also when a later association (over 128 contexts) could not be opened
        for failure in report.failed:
            print(f"failed {failure.path}: {failure.reason}", file=sys.stderr)
        if report.sent or report.failed:
            print(
                f"sent {len(report.sent)}, failed {len(report.failed)}, "
                f"skipped {len(report.skipped)}"
            )
        if report.converted:
            print(
                f"{len(report.converted)} of them sent uncompressed: the peer accepted none "
                "of their own transfer syntaxes"
            )
    return 0 if not report.failed else 1


#: ``dicomnode send`` options for the fields of :class:`ClientTLSConfig`.
_TLS_OPTIONS = {
    "ca_file": "--ca",
    "certificate": "--cert",
    "private_key": "--key",
    "server_hostname": "--server-name",
}


def _send_tls(args: argparse.Namespace, host: str) -> tuple[ssl.SSLContext, str] | None:
    """The TLS context and expected peer name of ``send --tls``, or ``None``."""
    from pydantic import ValidationError

    from dicomnode.config import ClientTLSConfig

    given = {
        name: getattr(args, name)
        for name in ("ca_file", "certificate", "private_key", "server_hostname")
        if getattr(args, name) is not None
    }
    if not args.tls:
        if given:
            options = ", ".join(_TLS_OPTIONS[name] for name in given)
            raise ConfigError(f"{options}: only with --tls")
        return None
    if ("certificate" in given) != ("private_key" in given):
        raise ConfigError("--cert, --key: give both or neither")
    try:
        config = ClientTLSConfig(check_hostname=not args.no_hostname_check, **given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            where = ", ".join(_TLS_OPTIONS.get(part, part) for part in loc) or "--tls"
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        raise ConfigError("invalid TLS options", problems) from exc
    return config.context(), config.hostname_for(host)


def _fmt_purged(purged: int, rounds: int, at: float | None) -> str:
    """``-``, or how many rounds retention purged and when it last did."""
    if not purged or at is None:
        return "-"
    return f"{purged}/{rounds} rounds, {_fmt_time(at)}"


def cmd_drift(args: argparse.Namespace) -> int:
    """Print the latest drift comparison of every pipeline with descriptors."""
    with _admin(args) as admin:
        reports = admin.drift()
        settings = admin.settings
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
        return 0
    if not reports:
        print("no runs with descriptors yet")
        return 0
    for report in reports:
        if not report.compared:
            print(
                f"{report.pipeline}: not compared, {report.reference_runs} reference and "
                f"{report.recent_runs} recent runs (monitoring.min_runs is "
                f"{settings.monitoring.min_runs})"
            )
            continue
        moved = ", ".join(c.descriptor for c in report.drifted) or "nothing moved"
        print(
            f"{report.pipeline}: {report.reference_runs} reference runs, "
            f"{report.recent_runs} recent runs: {moved}"
        )
        rows = [
            [
                c.descriptor,
                c.kind,
                f"{c.psi:.3f}",
                "-" if c.p_value is None else f"{c.p_value:.2g}",
                "DRIFT" if c.drifted else "ok",
            ]
            for c in report.comparisons
        ]
        print(_table(["DESCRIPTOR", "KIND", "PSI", "KS P", ""], rows))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a pipeline on a labelled set and write the report."""
    from dicomnode.config.schema import RunnerConfig
    from dicomnode.monitoring.evaluate import evaluate
    from dicomnode.monitoring.report import write_report
    from dicomnode.runner.stage import pipeline_options

    settings = _load(args.config) if args.config else None
    runner = settings.runner if settings is not None else RunnerConfig()
    evaluation = evaluate(
        Path(args.set),
        args.pipeline,
        labels_csv=Path(args.labels) if args.labels else None,
        plugins=tuple(runner.plugins),
        models_dir=runner.models_dir,
        options=pipeline_options(runner),
        tolerance_mm=args.tolerance,
        threshold=args.threshold,
    )
    index = write_report(evaluation, Path(args.out))
    metrics = evaluation.metrics
    print(
        f"{args.pipeline}: {metrics['set']['scored']} of {metrics['set']['studies']} studies scored"
    )
    for name, entry in metrics["segmentation"].items():
        dice = entry["dice"]
        ci = f" (95 % CI {dice['ci95'][0]:.3f} to {dice['ci95'][1]:.3f})" if dice["ci95"] else ""
        print(f"  {name}: mean Dice {dice['mean']:.3f}{ci}, n={dice['n']}")
    for name, entry in metrics["classification"].items():
        auc = entry["auc"]["value"]
        print(f"  {name}: AUC {'-' if auc is None else f'{auc:.3f}'}, n={entry['n']}")
    print(f"report: {index}")
    return 0 if metrics["set"]["scored"] else 1


def cmd_run(args: argparse.Namespace) -> int:
    """Run a pipeline offline on a folder, as the node's workers do."""
    from dicomnode.admin.offline import run_offline
    from dicomnode.config.schema import RunnerConfig
    from dicomnode.resultfile import load_result

    settings = _load(args.config) if args.config else None
    out = Path(args.out)
    run = run_offline(
        Path(args.path),
        args.pipeline,
        out,
        runner=settings.runner if settings is not None else RunnerConfig(),
        node_name=settings.node.ae_title if settings is not None else "DICOMNODE",
        series_uid=args.series,
        device=args.device,
        bundle=Path(args.bundle) if args.bundle else None,
        dicom=not args.no_dicom,
    )
    if run.series_found > 1 and not args.series:
        print(
            f"{run.series_found} series found; using the one with most instances "
            f"({run.series_instance_uid}); choose with --series"
        )
    if not run.ok:
        print(f"error: {run.summary}", file=sys.stderr)
        if args.verbose and run.traceback:
            print(run.traceback, file=sys.stderr)
        return 1
    result, document = load_result(out)
    print(f"{args.pipeline} on {len(run.files)} instance(s), {run.device}: {result.summary}")
    print(f"took {document['seconds']:.1f} s; result in {out}")
    for path in run.objects:
        print(f"wrote {path}")
    rows = [
        [
            next((s.name for s in result.segments if s.label == m.segment_label), "-"),
            m.concept.meaning,
            f"{m.value:.4g}",
            m.unit.value,
        ]
        for m in result.measurements
    ]
    if rows:
        print(_table(["SEGMENT", "MEASUREMENT", "VALUE", "UNIT"], rows))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Write a PNG preview of a study's (or a result folder's) result."""
    from dicomnode.preview import render_preview

    if args.outbox is not None:
        if args.sources is None:
            raise DicomNodeError("--outbox needs --sources (the run's input series)")
        source = Path(args.sources)
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        result = Path(args.result) if args.result else None
        data = render_preview(Path(args.outbox), files, result_dir=result)
    else:
        if args.study is None and args.job is None:
            raise DicomNodeError("give a STUDY_UID, --job ID, or --outbox DIR --sources DIR")
        with _admin(args) as admin:
            data = admin.preview(study_uid=args.study, job_id=args.job)
    Path(args.out).write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0


def _num(value: object, digits: int = 3) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def cmd_shadow_report(args: argparse.Namespace) -> int:
    """Print how far each rule's shadow candidate agrees with its pipeline."""
    with _admin(args) as admin:
        summaries, promotions = admin.shadow_report(args.rule)
    if args.json:
        document = {"pairs": [s.as_dict() for s in summaries], "promotions": promotions}
        print(json.dumps(document, indent=2))
        return 0
    if not summaries:
        print("no shadow comparisons yet")
    for summary in summaries:
        print(
            f"rule {summary.rule}: {summary.production} (production) vs {summary.candidate} "
            f"(candidate), {summary.studies} studies, last {_fmt_time(summary.last_at)}"
        )
        if summary.structures:
            rows = [
                [name, str(v["n"]), _num(v["mean_dice"]), _num(v["min_dice"]), _num(v["max_dice"])]
                for name, v in summary.structures.items()
            ]
            print(_table(["STRUCTURE", "N", "MEAN DICE", "MIN", "MAX"], rows))
        if summary.findings:
            rows = [
                [
                    name,
                    str(v["n"]),
                    _num(v["agreement"]),
                    _num(v["mean_difference"]),
                    _num(v["mean_abs_difference"]),
                ]
                for name, v in summary.findings.items()
            ]
            print(_table(["FINDING", "N", "AGREEMENT", "MEAN DIFF", "MEAN |DIFF|"], rows))
    for promotion in promotions:
        print(
            f"promoted {_fmt_time(float(str(promotion['at'])))}: rule {promotion['rule']} "
            f"{promotion['from_pipeline']} -> {promotion['to_pipeline']} by "
            f"{promotion['by_user']} (backup {promotion['backup_path']})"
        )
    return 0


def cmd_shadow_promote(args: argparse.Namespace) -> int:
    """Make a rule's shadow candidate its pipeline (YAML rewritten, backup kept,
    promotion recorded in the job store and the audit trail)."""
    with _admin(args) as admin:
        promotion = admin.promote(args.rule, args.actor or _actor())
    print(
        f"rule {promotion['rule']}: {promotion['to_pipeline']} replaces "
        f"{promotion['from_pipeline']} in {promotion['config_path']} (backup: "
        f"{promotion['backup_path']}); `dicomnode config reload` or a restart applies it"
    )
    return 0


def cmd_corrections(args: argparse.Namespace) -> int:
    """List the radiologists' corrections received and their scores."""
    with _admin(args) as admin:
        rows = admin.corrections()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no corrections received")
        return 0
    table = []
    for row in rows:
        scores = row["scores"] if isinstance(row["scores"], dict) else {}
        segments = scores.get("segments", {})
        table.append(
            [
                str(row["id"]),
                _fmt_time(float(str(row["received_at"]))),
                str(row["job_id"]),
                str(row["pipeline"]),
                str(row["matched_by"]),
                str(row["state"]),
                "; ".join(
                    f"{name} Dice {_num(v.get('dice'))} "
                    f"dV {_num(v.get('volume_difference_ml'), 1)} ml"
                    for name, v in segments.items()
                )
                or str(row["reason"] or ""),
            ]
        )
    print(_table(["ID", "RECEIVED", "JOB", "PIPELINE", "MATCHED BY", "STATE", "SCORES"], table))
    return 0


def _read_password(from_stdin: bool) -> str:
    """A new password: one line of stdin, or typed twice at a prompt."""
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("password: the two entries differ")
    return first


def cmd_users(args: argparse.Namespace) -> int:
    """Console users: add (password from a prompt or stdin), list, remove."""
    from dicomnode.auth import UserStore

    settings = _load(args.config)
    users = UserStore(settings.users_db_path)
    if args.users_command == "add":
        user = users.add(args.name, args.role, _read_password(args.password_stdin))
        print(f"added {user.name} ({user.role}) to {settings.users_db_path}")
    elif args.users_command == "remove":
        users.remove(args.name)
        print(f"removed {args.name}")
    else:
        now = time.time()
        rows = [
            [
                u.name,
                str(u.role),
                _fmt_time(u.created_at),
                f"until {_fmt_time(u.locked_until)}" if u.locked(now) else "-",
            ]
            for u in users.users()
        ]
        print(_table(["NAME", "ROLE", "CREATED", "LOCKED"], rows))
    return 0


# -- the admin layer's commands ------------------------------------------------

#: ``--since 2h``: the units a relative time may have.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _when(text: str) -> float:
    """``--since``/``--until``: ``30m``, ``2h``, ``7d`` ago, or a local date
    or time (``2026-03-01``, ``2026-03-01T08:00``)."""
    import datetime

    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        return time.time() - int(value[:-1]) * _UNITS[value[-1]]
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an age (30m, 2h, 7d) nor a date or time (2026-03-01T08:00)"
        ) from None


def _actor() -> str:
    """Who runs the command: the login name."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        return str(os.getuid())


def _uid(uid: str | None, full: bool) -> str:
    """A UID for a table: its last 12 characters after an ellipsis unless ``--full``."""
    if not uid:
        return "-"
    return uid if full or len(uid) <= 16 else "…" + uid[-12:]


def _admin(args: argparse.Namespace) -> Admin:
    chosen = args.config or os.environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError(f"no configuration file: pass -c FILE or set {CONFIG_ENV}")
    return Admin.open(chosen)


def _print_json(value: object) -> None:
    from pydantic import BaseModel

    def plain(item: object) -> object:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if isinstance(item, list):
            return [plain(i) for i in item]
        return item

    print(json.dumps(plain(value), indent=2))


def cmd_studies(args: argparse.Namespace) -> int:
    """List the studies the job store knows, filtered; INST, SERIES and DUP
    count what the spool still holds (CONFLICT: the duplicates whose content
    differed from the copy kept), PURGED the rounds retention removed."""
    from dicomnode.admin import StudyFilter

    query = StudyFilter(
        study_instance_uid=args.study,
        accession_number=args.accession,
        patient_id=args.patient_id,
        since=args.since,
        until=args.until,
        state=args.state,
        calling_ae=args.calling_ae,
        rule=args.rule,
        limit=args.limit,
    )
    with _admin(args) as admin:
        studies = admin.studies(query)
    if args.json:
        _print_json(studies)
        return 0
    rows = [
        [
            _uid(s.study_instance_uid, args.full),
            s.modalities or "-",
            str(s.series_count),
            str(s.instance_count),
            str(s.duplicate_count),
            str(s.conflict_count),
            str(s.rounds),
            s.state + (" [held]" if s.held else ""),
            _fmt_time(s.first_received_at),
            _fmt_time(s.last_received_at),
            _fmt_purged(s.purged_rounds, s.rounds, s.purged_at),
        ]
        for s in studies
    ]
    headers = [
        "STUDY UID",
        "MOD",
        "SERIES",
        "INST",
        "DUP",
        "CONFLICT",
        "ROUNDS",
        "STATE",
        "FIRST",
        "LAST",
        "PURGED",
    ]
    print(_table(headers, rows))
    return 0


def _print_job(detail: RunDetail, full: bool) -> None:
    what = (
        f"run of {detail.pipeline} (rule {detail.rule}) on series "
        f"{_uid(detail.series_instance_uid, full)}"
        if detail.kind == "run"
        else f"study round {detail.round}"
    )
    print(
        f"job {detail.id}: {what} of study {_uid(detail.study_instance_uid, full)}, "
        f"{detail.instance_count} instance(s), now {detail.state}"
        + (f" after {detail.attempts} attempt(s)" if detail.kind == "run" else "")
        + (f", held by {detail.held_by}" if detail.held_at is not None else "")
    )
    if detail.purged_at is not None:
        print(
            f"purged by retention on {_fmt_time(detail.purged_at)}: "
            "its instances and results are no longer kept"
        )
    elif detail.result_dir:
        print(f"result: {detail.result_dir}")
    rows = [
        [
            _fmt_time(step.at),
            step.to_state,
            "-" if step.seconds_in_state is None else _fmt_duration(step.seconds_in_state),
            step.reason or "",
        ]
        for step in detail.history
    ]
    print(_table(["AT", "STATE", "TIME IN STATE", "REASON"], rows))
    if detail.deliveries:
        print()
        print(
            _table(
                ["DESTINATION", "KIND", "OBJECT", "STATE", "ATTEMPTS", "LAST ERROR"],
                [
                    [
                        d.destination,
                        d.kind,
                        d.object,
                        d.state,
                        str(d.attempts),
                        d.last_error or "",
                    ]
                    for d in detail.deliveries
                ],
            )
        )
    if detail.traceback:
        print("\nlast failure:\n" + detail.traceback.rstrip())


def cmd_study_show(args: argparse.Namespace) -> int:
    """Show a study with every round, run and delivery."""
    with _admin(args) as admin:
        detail = admin.study(args.study)
    if args.json:
        _print_json(detail)
        return 0
    s = detail.summary
    print(
        f"study {s.study_instance_uid}: {s.modalities or '-'}, {s.series_count} series, "
        f"{s.instance_count} instance(s), {s.rounds} round(s), latest {s.state}"
        + (", held" if s.held else "")
    )
    print(f"accession {s.accession_number or '-'}, patient ID {s.patient_id or '-'}")
    for entry in detail.rounds:
        print()
        _print_job(entry.round, args.full)
        for run in entry.runs:
            print()
            _print_job(run, args.full)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """List jobs, newest first."""
    with _admin(args) as admin:
        jobs = admin.jobs(
            state=args.state, study_uid=args.study, since=args.since, limit=args.limit
        )
    if args.json:
        _print_json(jobs)
        return 0
    now = time.time()
    rows = [
        [
            str(j.id),
            j.kind if j.kind == "study" else f"run:{j.pipeline}",
            _uid(j.study_instance_uid, args.full),
            str(j.round),
            j.state + (" [held]" if j.held else ""),
            str(j.instance_count),
            _fmt_time(j.opened_at),
            _fmt_duration(max(0.0, now - j.updated_at)),
            ("[purged] " if j.purged else "") + (j.reason or ""),
        ]
        for j in jobs
    ]
    headers = ["ID", "KIND", "STUDY UID", "ROUND", "STATE", "INST", "OPENED", "IN STATE", "REASON"]
    print(_table(headers, rows))
    return 0


def cmd_job_show(args: argparse.Namespace) -> int:
    """Show a job's transitions and deliveries."""
    with _admin(args) as admin:
        detail = admin.job(args.id)
    if args.json:
        _print_json(detail)
        return 0
    _print_job(detail, args.full)
    return 0


def cmd_job_action(args: argparse.Namespace) -> int:
    """retry, replay, hold, release or discard one job (audited)."""
    with _admin(args) as admin:
        act = {
            "retry": admin.retry,
            "replay": admin.replay,
            "hold": admin.hold,
            "release": admin.release,
            "discard": admin.discard,
        }[args.action]
        result = act(args.id, args.actor or _actor())
    if args.json:
        _print_json(result)
        return 0
    print(f"job {result.job_id}: {result.before} -> {result.after}: {result.message}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Deliver again every finished run of a study (audited)."""
    with _admin(args) as admin:
        results = admin.replay_study(args.study, args.actor or _actor())
    if args.json:
        _print_json(results)
        return 0
    for result in results:
        print(f"job {result.job_id}: results queued for delivery again")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    """List deliveries, newest first (``--state DEAD``: the dead letters)."""
    with _admin(args) as admin:
        rows = admin.deliveries(
            state=args.state, destination=args.destination, study_uid=args.study, limit=args.limit
        )
    if args.json:
        _print_json(rows)
        return 0
    print(
        _table(
            ["ID", "JOB", "STUDY UID", "DESTINATION", "OBJECT", "STATE", "ATTEMPTS", "LAST ERROR"],
            [
                [
                    str(d.id),
                    str(d.job_id),
                    _uid(d.study_instance_uid, args.full),
                    d.destination,
                    d.object,
                    d.state,
                    str(d.attempts),
                    d.last_error or "",
                ]
                for d in rows
            ],
        )
    )
    return 0


def cmd_destinations(args: argparse.Namespace) -> int:
    """List the configured destinations and the rules that use each."""
    from dicomnode.admin.operations import destination_rows

    rows = destination_rows(_load(args.config))
    if args.json:
        _print_json(rows)
        return 0
    print(
        _table(
            ["NAME", "TYPE", "TARGET", "TLS", "USED BY"],
            [
                [r.name, r.type, r.target, "yes" if r.tls else "", ", ".join(r.used_by) or "-"]
                for r in rows
            ],
        )
    )
    return 0


def cmd_destination_test(args: argparse.Namespace) -> int:
    """C-ECHO a DICOM destination, connect to an HL7 one, check a folder (audited)."""
    with _admin(args) as admin:
        result = admin.test_destination(args.name, args.actor or _actor())
    if args.json:
        _print_json(result)
    else:
        verdict = "OK" if result.ok else "FAILED"
        print(
            f"{result.destination} ({result.type}, {result.target}): {verdict}: "
            f"{result.detail} ({result.seconds:.2f} s)"
        )
    return 0 if result.ok else 1


def cmd_route_explain(args: argparse.Namespace) -> int:
    """Explain, rule by rule, where a folder or a received study would be routed."""
    from dicomnode.admin.operations import explain_files

    target = Path(args.target)
    if target.exists():
        settings = _load(args.config)
        paths = [p for p in target.rglob("*") if p.is_file()] if target.is_dir() else [target]
        explanations = explain_files(paths, settings.routing, args.calling_ae or "")
        if not explanations:
            raise DicomNodeError(f"no DICOM files under {args.target}")
    else:
        try:
            admin = _admin(args)
        except DicomNodeError as exc:
            if "no job store" not in str(exc):
                raise
            raise DicomNodeError(
                f"{args.target} is neither a path nor a study the node holds"
            ) from exc
        with admin:
            explanations = [
                admin.explain(
                    args.target, round_number=args.round, calling_ae=args.calling_ae or None
                )
            ]
    if args.json:
        _print_json(explanations)
        return 0
    for explanation in explanations:
        if explanation.round is not None:
            print(
                f"round {explanation.round} of {explanation.round_count}: "
                f"{explanation.round_instances} instance(s), {explanation.round_state}"
            )
        print(f"study {explanation.study_instance_uid} ({explanation.series_count} series)")
        print(explanation.text)
    return 0


def cmd_route_dry_run(args: argparse.Namespace) -> int:
    """Route the last N received studies under the rules in the file now (it
    may have changed since the node loaded it) and compare with what they got."""
    with _admin(args) as admin:
        rows = admin.dry_run(last=args.last)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no studies received yet")
        return 0
    print(
        _table(
            ["STUDY UID", "ROUND", "RECEIVED", "THEN", "NOW", "CHANGED", "NOTE"],
            [
                [
                    _uid(r.study_instance_uid, args.full),
                    str(r.round),
                    _fmt_time(r.received_at),
                    ", ".join(r.before) or "-",
                    ", ".join(r.after) or "-",
                    "yes" if r.changed else "",
                    r.note or "",
                ]
                for r in rows
            ],
        )
    )
    return 0


def cmd_config_reload(args: argparse.Namespace) -> int:
    """Validate the file and have the running node apply it (SIGHUP; audited)."""
    chosen = args.config or os.environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError(f"no configuration file: pass -c FILE or set {CONFIG_ENV}")
    with Admin.open_for_reload(chosen) as admin:
        result = admin.reload(args.actor or _actor())
    if args.json:
        _print_json(result)
    else:
        for problem in result.problems:
            print(f"  {problem}", file=sys.stderr)
        where = f"node pid {result.node_pid}" if result.node_pid else "no node running"
        print(f"{result.source} ({where}): {result.message}")
        if result.changed_sections:
            print(f"changed: {', '.join(result.changed_sections)}")
    if result.problems:
        return 1
    return 0


def cmd_audit_list(args: argparse.Namespace) -> int:
    """List audit events, newest first. Patient identifiers are shown only
    with --json or --identifiers (they are kept in the audit trail only)."""
    from dicomnode.admin import AuditFilter

    with _admin(args) as admin:
        rows = admin.audit(
            AuditFilter(
                since=args.since,
                until=args.until,
                event=args.event,
                actor=args.actor_filter,
                study_instance_uid=args.study,
                patient_id=args.patient_id,
                accession_number=args.accession,
                limit=args.limit,
            )
        )
    if args.json:
        _print_json(rows)
        return 0

    def what(row: AuditRow) -> str:
        detail = {
            k: v for k, v in row.detail.items() if k not in ("before", "after") and v is not None
        }
        text = ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))
        if args.identifiers and (row.patient_id or row.accession_number):
            text = (
                f"patient {row.patient_id or '-'} accession {row.accession_number or '-'} " + text
            )
        return text[:120]

    print(
        _table(
            ["ID", "AT", "EVENT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "STUDY UID", "DETAIL"],
            [
                [
                    str(r.id),
                    _fmt_time(r.at),
                    r.event,
                    r.actor,
                    r.action or "-",
                    _uid(r.target, args.full) if r.target[:1].isdigit() else r.target or "-",
                    r.outcome,
                    _uid(r.study_instance_uid, args.full),
                    what(r),
                ]
                for r in rows
            ],
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dicomnode``."""
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, suppress: bool = False) -> None:
        # a subcommand's copy of an option must not reset what its parent parsed
        p.add_argument(
            "-c",
            "--config",
            help=f"the node's YAML file (default: ${CONFIG_ENV})",
            default=argparse.SUPPRESS if suppress else None,
        )

    def with_json(p: argparse.ArgumentParser, suppress: bool = False) -> None:
        p.add_argument(
            "--json",
            action="store_true",
            help="print JSON",
            default=argparse.SUPPRESS if suppress else False,
        )

    def with_actor(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--as",
            dest="actor",
            metavar="NAME",
            help="who acts, for the audit trail (default: the login name)",
        )

    def with_listing(
        p: argparse.ArgumentParser,
        *,
        limit: bool = True,
        since: bool = True,
        suppress: bool = False,
    ) -> None:
        unset = argparse.SUPPRESS if suppress else None
        with_json(p, suppress)
        p.add_argument(
            "--full",
            action="store_true",
            help="full UIDs in tables (default: shortened)",
            default=argparse.SUPPRESS if suppress else False,
        )
        if limit:
            p.add_argument(
                "--limit",
                type=int,
                metavar="N",
                help="at most N rows (default 50)",
                default=argparse.SUPPRESS if suppress else 50,
            )
        if since:
            p.add_argument(
                "--since",
                type=_when,
                metavar="WHEN",
                help="only since WHEN: an age (30m, 2h, 7d) or a date/time (2026-03-01T08:00)",
                default=unset,
            )

    def with_study_filters(p: argparse.ArgumentParser, suppress: bool = False) -> None:
        unset = argparse.SUPPRESS if suppress else None
        p.add_argument("--until", type=_when, metavar="WHEN", help="before WHEN", default=unset)
        p.add_argument("--study", metavar="STUDY_UID", help="this study", default=unset)
        p.add_argument("--accession", metavar="NUMBER", help="this accession number", default=unset)
        p.add_argument("--patient-id", metavar="ID", help="this patient ID", default=unset)
        p.add_argument(
            "--state",
            choices=[s.value for s in JobState],
            help="a job of the study is in this state",
            default=unset,
        )
        p.add_argument("--calling-ae", metavar="AE", help="sent by this AE title", default=unset)
        p.add_argument("--rule", metavar="NAME", help="a run came from this rule", default=unset)

    serve = sub.add_parser("serve", help="run the node")
    with_config(serve)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker", help="run pipelines for the node as a Celery worker (runner.executor: celery)"
    )
    with_config(worker)
    worker.add_argument(
        "--pipelines",
        required=True,
        metavar="NAME[,NAME...]",
        help="the pipelines this worker serves (it consumes their queues dicomnode.<name>)",
    )
    worker.add_argument(
        "--name",
        metavar="NAME",
        help="the worker's name, unique among the workers (default: dicomnode-<pid>@<host>)",
    )
    worker.set_defaults(func=cmd_worker)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    reload = config_sub.add_parser(
        "reload",
        help="validate the file and have the running node apply it (rules, destinations, "
        "export; SIGHUP); an invalid file is refused and the old one stays in force",
    )
    with_config(reload)
    with_actor(reload)
    with_json(reload)
    reload.set_defaults(func=cmd_config_reload)

    models = sub.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_check = models_sub.add_parser(
        "check",
        help="load every configured model, verify its SHA-256 and run it once on a synthetic input",
    )
    with_config(models_check)
    models_check.add_argument(
        "--device", help="where to load (default: runner.device; auto: CUDA when there is one)"
    )
    models_check.add_argument("--json", action="store_true", help="print JSON")
    models_check.set_defaults(func=cmd_models_check)

    send = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer")
    send.add_argument("paths", nargs="+", metavar="PATH")
    send.add_argument("--to", required=True, metavar="HOST:PORT")
    send.add_argument("--aet", required=True, help="the peer's AE title (called AE)")
    send.add_argument("--calling-aet", default="DICOMNODE_SCU", help="our AE title")
    send.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    send.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    send.add_argument(
        "--tls", action="store_true", help="DICOM over TLS (1.2 or newer; the peer is verified)"
    )
    send.add_argument(
        "--ca",
        dest="ca_file",
        type=Path,
        metavar="FILE",
        help="CA certificate(s), PEM, the peer's certificate must chain to (default: the system's)",
    )
    send.add_argument(
        "--cert", dest="certificate", type=Path, metavar="FILE", help="our client certificate (PEM)"
    )
    send.add_argument(
        "--key", dest="private_key", type=Path, metavar="FILE", help="its private key (PEM)"
    )
    send.add_argument(
        "--server-name",
        dest="server_hostname",
        metavar="NAME",
        help="the name the peer's certificate must carry (default: the host of --to)",
    )
    send.add_argument(
        "--no-hostname-check",
        action="store_true",
        help="accept a peer certificate that does not name the host (still verified)",
    )
    send.set_defaults(func=cmd_send)

    run = sub.add_parser("run", help="run a pipeline offline on a folder")
    run.add_argument("path", metavar="PATH", help="a folder (or file) of DICOM instances")
    run.add_argument("--pipeline", required=True)
    run.add_argument("--out", required=True, metavar="DIR", help="where the result goes")
    run.add_argument("--series", metavar="SERIES_UID", help="default: the largest series")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: from config)")
    run.add_argument("-c", "--config", help="take runner settings from this YAML file")
    run.add_argument(
        "--bundle", metavar="DIR", help="the MONAI bundle folder (for --pipeline monai-bundle)"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="print tracebacks")
    run.add_argument(
        "--no-dicom", action="store_true", help="save the result only, no SEG/SR/overlay objects"
    )
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser(
        "evaluate", help="score a pipeline on a labelled set (reference SEGs or labels.csv)"
    )
    evaluate.add_argument("set", metavar="SET", help="a folder of DICOM studies with references")
    evaluate.add_argument("--pipeline", required=True)
    evaluate.add_argument("--out", required=True, metavar="DIR", help="where the report goes")
    evaluate.add_argument(
        "--labels", metavar="CSV", help="labels per study (default: SET/labels.csv if present)"
    )
    evaluate.add_argument(
        "--tolerance", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)"
    )
    evaluate.add_argument(
        "--threshold", type=float, help="decision threshold (default: the pipeline's own)"
    )
    evaluate.add_argument("-c", "--config", help="take runner settings from this YAML file")
    evaluate.set_defaults(func=cmd_evaluate)

    route = sub.add_parser("route", help="routing tools")
    route_sub = route.add_subparsers(dest="route_command", required=True)
    explain = route_sub.add_parser("explain", help="why a study goes where it goes")
    explain.add_argument("target", metavar="DIR|STUDY_UID")
    explain.add_argument("--calling-ae", help="evaluate as if sent by this AE title")
    explain.add_argument(
        "--round",
        type=int,
        help="for a held study, the assembly round to explain (default: the latest)",
    )
    with_config(explain)
    with_json(explain)
    explain.set_defaults(func=cmd_route_explain)
    dry_run = route_sub.add_parser(
        "dry-run",
        help="route the last N received studies under the rules in the file now, and "
        "compare with what they got",
    )
    dry_run.add_argument("--last", type=int, default=20, metavar="N", help="default 20")
    with_config(dry_run)
    with_listing(dry_run, limit=False, since=False)
    dry_run.set_defaults(func=cmd_route_dry_run)

    replay = sub.add_parser("replay", help="deliver a study's results again")
    replay.add_argument("study", metavar="STUDY_UID")
    with_config(replay)
    with_actor(replay)
    with_json(replay)
    replay.set_defaults(func=cmd_replay)

    studies = sub.add_parser(
        "studies", help="list and search received studies (default: list), or show one"
    )
    studies_sub = studies.add_subparsers(dest="studies_command")
    studies_list = studies_sub.add_parser("list", help="list and search studies")
    for parser_ in (studies, studies_list):
        with_config(parser_, suppress=parser_ is studies_list)
        with_listing(parser_, suppress=parser_ is studies_list)
        with_study_filters(parser_, suppress=parser_ is studies_list)
        parser_.set_defaults(func=cmd_studies)
    studies_show = studies_sub.add_parser("show", help="a study with every round, run, delivery")
    studies_show.add_argument("study", metavar="STUDY_UID")
    with_config(studies_show, suppress=True)
    with_listing(studies_show, limit=False, since=False, suppress=True)
    studies_show.set_defaults(func=cmd_study_show)

    jobs = sub.add_parser(
        "jobs",
        help="list jobs, show one, or retry, replay, hold, release or discard one",
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command")
    jobs_list = jobs_sub.add_parser("list", help="list jobs, newest first")
    for parser_ in (jobs, jobs_list):
        quiet = parser_ is jobs_list
        with_config(parser_, suppress=quiet)
        with_listing(parser_, suppress=quiet)
        parser_.add_argument(
            "--state",
            choices=[s.value for s in JobState],
            default=argparse.SUPPRESS if quiet else None,
        )
        parser_.add_argument(
            "--study", metavar="STUDY_UID", default=argparse.SUPPRESS if quiet else None
        )
        parser_.set_defaults(func=cmd_jobs)
    jobs_show = jobs_sub.add_parser("show", help="a job's transitions and deliveries")
    jobs_show.add_argument("id", type=int, metavar="ID")
    with_config(jobs_show, suppress=True)
    with_listing(jobs_show, limit=False, since=False, suppress=True)
    jobs_show.set_defaults(func=cmd_job_show)
    for action, text in (
        (
            "retry",
            "run a DEAD or FAILED_RETRYABLE run again (only its failed deliveries, if it "
            "failed delivering)",
        ),
        ("replay", "deliver a DONE or DEAD run's results again, to every destination"),
        ("hold", "hold a job: not routed, run or delivered until released"),
        ("release", "release a held job"),
        ("discard", "give up a DEAD or held job for good (DISCARDED)"),
    ):
        acting = jobs_sub.add_parser(action, help=text)
        acting.add_argument("id", type=int, metavar="ID")
        with_config(acting, suppress=True)
        with_actor(acting)
        with_json(acting, suppress=True)
        acting.set_defaults(func=cmd_job_action, action=action)

    deliveries = sub.add_parser(
        "deliveries", help="list deliveries, newest first (--state DEAD: the dead letters)"
    )
    with_config(deliveries)
    with_listing(deliveries, since=False)
    deliveries.add_argument("--state", choices=["PENDING", "DELIVERED", "DEAD"])
    deliveries.add_argument("--destination", metavar="NAME")
    deliveries.add_argument("--study", metavar="STUDY_UID")
    deliveries.set_defaults(func=cmd_deliveries)

    destinations = sub.add_parser("destinations", help="destination tools")
    destinations_sub = destinations.add_subparsers(dest="destinations_command", required=True)
    listed = destinations_sub.add_parser("list", help="the configured destinations")
    with_config(listed)
    with_json(listed)
    listed.set_defaults(func=cmd_destinations)
    test = destinations_sub.add_parser(
        "test",
        help="C-ECHO a DICOM destination, connect to an HL7 one's MLLP port, check a folder",
    )
    test.add_argument("name", metavar="NAME")
    with_config(test)
    with_actor(test)
    with_json(test)
    test.set_defaults(func=cmd_destination_test)

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_list = audit_sub.add_parser("list", help="audit events, newest first")
    with_config(audit_list)
    with_listing(audit_list)
    audit_list.add_argument("--until", type=_when, metavar="WHEN", help="before this time")
    audit_list.add_argument(
        "--event", choices=[e.value for e in AuditEvent], help="only this kind of event"
    )
    audit_list.add_argument("--actor", dest="actor_filter", metavar="WHO", help="only by WHO")
    audit_list.add_argument("--study", metavar="STUDY_UID")
    audit_list.add_argument("--patient-id", metavar="ID")
    audit_list.add_argument("--accession", metavar="NUMBER")
    audit_list.add_argument(
        "--identifiers",
        action="store_true",
        help="show patient IDs and accession numbers in the table",
    )
    audit_list.set_defaults(func=cmd_audit_list)

    preview = sub.add_parser(
        "preview", help="a PNG of a result's key slice: segments or heatmap over the image"
    )
    preview.add_argument("study", nargs="?", metavar="STUDY_UID", help="its newest run's result")
    preview.add_argument("--job", type=int, metavar="ID", help="this run's result instead")
    preview.add_argument("-o", "--out", required=True, metavar="FILE", help="the PNG to write")
    preview.add_argument("-c", "--config", help="the node's YAML file (for its job store)")
    preview.add_argument(
        "--outbox", metavar="DIR", help="a folder of result objects (e.g. `run --out`'s dicom/)"
    )
    preview.add_argument("--sources", metavar="PATH", help="with --outbox: the input series")
    preview.add_argument(
        "--result", metavar="DIR", help="with --outbox: the result folder (a radiograph's heat)"
    )
    preview.set_defaults(func=cmd_preview)

    drift = sub.add_parser("drift", help="compare each pipeline's recent runs with its reference")
    with_config(drift)
    drift.add_argument("--json", action="store_true", help="print JSON")
    drift.set_defaults(func=cmd_drift)

    shadow = sub.add_parser("shadow", help="shadow mode: candidate pipelines beside production")
    shadow_sub = shadow.add_subparsers(dest="shadow_command", required=True)
    shadow_report = shadow_sub.add_parser(
        "report", help="agreement of each rule's candidate with its pipeline"
    )
    with_config(shadow_report)
    shadow_report.add_argument("--rule", help="only this rule")
    shadow_report.add_argument("--json", action="store_true", help="print JSON")
    shadow_report.set_defaults(func=cmd_shadow_report)
    promote = shadow_sub.add_parser(
        "promote", help="make a rule's candidate its pipeline (rewrites the YAML, keeps a backup)"
    )
    with_config(promote)
    promote.add_argument("rule", help="the rule's name")
    with_actor(promote)
    promote.set_defaults(func=cmd_shadow_promote)

    corrections = sub.add_parser(
        "corrections", help="radiologists' corrected SEGs received, scored against the node's"
    )
    with_config(corrections)
    corrections.add_argument("--json", action="store_true", help="print JSON")
    corrections.set_defaults(func=cmd_corrections)

    users = sub.add_parser("users", help="the web console's users (console.users_db)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    users_add = users_sub.add_parser("add", help="add a user (asks for the password)")
    users_add.add_argument("name")
    users_add.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    users_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    users_remove = users_sub.add_parser("remove", help="remove a user and end their sessions")
    users_remove.add_argument("name")
    users_list = users_sub.add_parser("list", help="list the users")
    for command in (users_add, users_remove, users_list):
        with_config(command)
        command.set_defaults(func=cmd_users)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if len(words) > 1 and words[0] == "jobs" and words[1].isdigit():
        words.insert(1, "show")  # `dicomnode jobs ID`, as before `jobs show ID`
    args = build_parser().parse_args(words)
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

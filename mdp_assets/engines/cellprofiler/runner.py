"""Runs CellProfiler pipelines headless for one plate, group by group, under Dagster Pipes.

This file runs inside CellProfiler's own Python 3.9 environment (or a container image), so it uses only
the standard library and `dagster_pipes`. The platform starts it with `PipesSubprocessClient` (or a
Kubernetes/ECS Pipes client) and passes, as Pipes extras:

    pipeline      path of the .cppipe
    groups        [{"id": ..., "output_dir": ..., "data_file": ... | None, "file_list": ... | None}, ...]
    workers       how many CellProfiler processes at once
    java_home     optional JAVA_HOME for python-javabridge

Each group is one `python -m cellprofiler -c -r` process. Its whole output goes to this process's stderr, which is
the Dagster step's compute log (stdout/stderr in the run view); each group's result counts the image sets it did and
the warnings CellProfiler printed (by kind), which mdp puts in the event log as one summary per group. A group
fails if CellProfiler exits non-zero, cannot load the pipeline (it then exits 0 but says so), or processes
no image set. A group that finishes writes `_group_done.json` in its output folder; a re-run skips such groups, so only what
failed runs again. A failed group is reported with CellProfiler's own last words; the others continue.
Without Pipes (no DAGSTER_PIPES_* environment) it reads the same parameters as JSON from argv[1].
"""

import json
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

DONE = "_group_done.json"
IMAGE_LINE = re.compile(r"Image # (\d+), module (\S+) # (\d+)")
# Python warnings ("<file>:<line>: UserWarning: ...") and logging's ("WARNING ..." / "...: WARNING: ...").
WARNING_LINE = re.compile(r"(?:^|[\s:])(?:[A-Z][A-Za-z]*Warning|WARNING)\b")
WARNING_SOURCE = re.compile(r"^\S+\.py:\d+:\s*")
KINDS_KEPT = 5


def warning_kind(line):
    """A warning line without where it was raised, file paths and numbers, so repeats of one warning (one per
    site's file, say) count together."""
    text = re.sub(r"\S*/\S+", "<file>", WARNING_SOURCE.sub("", line.strip()))
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


def cellprofiler_version() -> str:
    import cellprofiler  # this file runs in CellProfiler's own environment, never imported by mdp

    return cellprofiler.__version__


def run_group(pipeline, group, java_home, log):
    output_dir = group["output_dir"]
    marker = os.path.join(output_dir, DONE)
    if os.path.exists(marker):
        with open(marker) as handle:
            return dict(json.load(handle), skipped=True)
    os.makedirs(output_dir, exist_ok=True)
    command = [sys.executable, "-m", "cellprofiler", "-c", "-r", "-p", pipeline, "-o", output_dir]
    if group.get("data_file"):
        command += ["--data-file", group["data_file"]]
    if group.get("file_list"):
        command += ["--file-list", group["file_list"]]
    env = dict(os.environ)
    if java_home:
        env["JAVA_HOME"] = java_home
    tail, images, warnings, kinds = [], set(), 0, {}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if line:
            log(f"[{group['id']}] {line}")
        match = IMAGE_LINE.search(line)
        if match:
            images.add(int(match.group(1)))
        elif WARNING_LINE.search(line):
            warnings += 1
            kinds[warning_kind(line)] = kinds.get(warning_kind(line), 0) + 1
    code = process.wait()
    top = dict(sorted(kinds.items(), key=lambda item: (-item[1], item[0]))[:KINDS_KEPT])
    # CellProfiler 4 exits 0 when it cannot load the pipeline; it says so, and processes no image.
    load_failed = any("Failed to load pipeline" in line for line in tail)
    if code != 0 or load_failed or not images:
        start = next((i for i, line in enumerate(tail) if "Failed to load pipeline" in line or "Traceback" in line), None)
        message = "\n".join(tail[start:] if start is not None else tail[-15:])
        if not images and not load_failed and code == 0:
            message = "CellProfiler processed no image set\n" + message
        return {"id": group["id"], "ok": False, "exit_code": code, "message": message, "images": len(images),
                "warnings": warnings, "warning_kinds": top}
    result = {"id": group["id"], "ok": True, "images": len(images), "output_dir": output_dir, "warnings": warnings,
              "warning_kinds": top}
    with open(marker, "w") as handle:
        json.dump(result, handle)
    return result


def run(params, log, report):
    pipeline, groups = params["pipeline"], params["groups"]
    workers = max(1, int(params.get("workers") or 1))
    lock = threading.Lock()

    def one(group):
        result = run_group(pipeline, group, params.get("java_home"), log)
        with lock:
            report(result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, groups))
    return {"cellprofiler_version": cellprofiler_version(), "groups": results}


def _to_compute_log(line):
    print(line, file=sys.stderr, flush=True)


def main():
    if os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes  # present in CellProfiler's environment (build-env.sh)

        with open_dagster_pipes() as pipes:
            # CellProfiler's lines go to the compute log, not one event-log entry each (mdp logs a summary per group).
            summary = run(dict(pipes.extras), _to_compute_log, pipes.report_custom_message)
            pipes.report_custom_message({"summary": summary})
            failed = [g for g in summary["groups"] if not g["ok"]]
            if failed:
                pipes.log.error(f"{len(failed)} of {len(summary['groups'])} CellProfiler group(s) failed")
    else:
        with open(sys.argv[1]) as handle:
            params = json.load(handle)
        summary = run(params, lambda line: print(line, file=sys.stderr), lambda _: None)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

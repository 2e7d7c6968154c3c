"""Benchmark: how long a `new_plate_sensor` tick takes over a large landing zone.

Builds a landing zone of 500 plates x 200 small (valid) Phenix TIFFs, registers them all (a bounded number
of plates validated per tick, so over several ticks), then times
5 ticks with nothing new and 5 ticks that each find one new plate. The last line reads
`sensor_tick_seconds=<median, nothing new> sensor_tick_seconds_one_new_plate=<median>`.

    .venv/bin/python bench/sensor.py [--plates 500] [--files 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import tifffile
import yaml

from mdp_assets.defs.plates.resources import IntakeSettings
from mdp_assets.defs.plates.sensors import new_plate_sensor
from mdp_assets.storage.resource import MdpStorage

CHANNELS = 5


def tiny_tiff() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    return buffer.getvalue()


def write_plate(landing: Path, barcode: str, files: int, payload: bytes, mtime: float) -> None:
    folder = landing / barcode
    folder.mkdir(parents=True)
    sites = files // CHANNELS
    for index in range(sites):
        row, col, field = 1 + index // 120, 1 + (index // 5) % 24, 1 + index % 5
        for channel in range(1, CHANNELS + 1):
            (folder / f"r{row:02d}c{col:02d}f{field:02d}p01-ch{channel}sk1fk1fl1.tiff").write_bytes(payload)
    (folder / "platemap.csv").write_text("well_position,treatment\nA01,DMSO\n")
    manifest = {"barcode": barcode, "origin": "internal", "platemap": "platemap.csv", "naming_scheme": "phenix",
                "expected_image_count": sites * CHANNELS}
    (folder / "plate.yaml").write_text(yaml.safe_dump(manifest))
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (mtime, mtime))


def tick(storage: MdpStorage, instance: dg.DagsterInstance, cursor: str | None) -> tuple[float, dg.SensorResult]:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": storage, "intake": IntakeSettings(quiet_period_seconds=60)}
    )
    start = time.perf_counter()
    result = new_plate_sensor(context)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=500)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="build the landing zone here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mdp-bench-sensor-"))
    storage = MdpStorage(data_root=str(root))
    payload, old = tiny_tiff(), time.time() - 3600
    try:
        start = time.perf_counter()
        for index in range(args.plates):
            write_plate(storage.landing_path, f"BENCH-{index:04d}", args.files, payload, old)
        print(f"landing zone: {args.plates} plates x {args.files} files built in {time.perf_counter() - start:.1f} s")
        with dg.instance_for_test() as instance:
            cursor, registered, first_ticks = None, 0, []
            while registered < args.plates:
                seconds, result = tick(storage, instance, cursor)
                registered += len(result.run_requests)
                cursor = result.cursor
                first_ticks.append(seconds)
            print(f"registering all {args.plates} plates took {len(first_ticks)} ticks, {sum(first_ticks):.1f} s "
                  f"(longest tick {max(first_ticks):.2f} s)")
            idle = []
            for _ in range(5):
                seconds, result = tick(storage, instance, cursor)
                assert not result.run_requests
                idle.append(seconds)
            one_new = []
            for index in range(5):
                write_plate(storage.landing_path, f"NEW-{index:04d}", args.files, payload, old)
                seconds, result = tick(storage, instance, cursor)
                assert len(result.run_requests) == 1, result.skip_reason
                cursor = result.cursor
                one_new.append(seconds)
        print("nothing new, 5 ticks (s): " + " ".join(f"{s:.3f}" for s in idle))
        print("one new plate, 5 ticks (s): " + " ".join(f"{s:.3f}" for s in one_new))
        print(f"sensor_tick_seconds={statistics.median(idle):.3f} "
              f"sensor_tick_seconds_one_new_plate={statistics.median(one_new):.3f}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Reads a CellProfiler pipeline with cellprofiler-core and prints what it is made of, as JSON.

This file runs inside CellProfiler's own Python 3.9 environment (like runner.py), never imported by mdp:

    <env>/bin/python inspect_pipeline.py PIPELINE [FILE_LIST]

It loads the pipeline (`.cppipe` or `.cpproj`) as CellProfiler does, so old module revisions are upgraded
and settings carry their current names, and prints every enabled module with its settings (text, value,
setting class), the images the input modules must provide (every image a module subscribes to that no
module makes), the images and objects the modules make, and, given a file list, the image sets the
pipeline's own input modules (Images, Metadata, NamesAndTypes, Groups) make of it: per image set the file
each image name gets and the metadata extracted (CellProfiler's prepare_run, as `cellprofiler -c -r`).
mdp (engines/cellprofiler/describe.py) interprets this; nothing here knows about mdp.
"""

import json
import logging
import os
import shutil
import sys
import tempfile


MARKER = "MDP_PIPELINE_DESCRIPTION"


def _setting(setting):
    kind = type(setting).__name__
    try:
        value = setting.value_text
    except Exception:  # a few settings have no text value (buttons, dividers)
        value = None
    return {"text": setting.text, "value": value, "kind": kind}


def describe(pipeline):
    from cellprofiler_core.setting.subscriber import ImageListSubscriber, ImageSubscriber, LabelSubscriber
    from cellprofiler_core.setting.text import ImageName, LabelName

    modules, subscribed, provided, objects = [], [], [], []
    for module in pipeline.modules():
        if not module.enabled:
            continue
        settings = [_setting(s) for s in module.settings()]
        modules.append({"name": module.module_name, "number": module.module_num,
                        "input": bool(module.is_input_module() or module.is_load_module()), "settings": settings})
        for setting in module.visible_settings():
            value = setting.value_text if hasattr(setting, "value_text") else None
            if not value or value == "None":
                continue
            if isinstance(setting, ImageSubscriber):
                subscribed.append(value)
            elif isinstance(setting, ImageListSubscriber):
                subscribed += [name.strip() for name in value.split(",") if name.strip()]
            elif isinstance(setting, ImageName) and not (module.is_input_module() or module.is_load_module()):
                provided.append(value)
            elif isinstance(setting, LabelName) and not isinstance(setting, LabelSubscriber):
                objects.append({"module": module.module_name, "name": value})
    from_input = []
    for module in pipeline.modules():
        if module.enabled and (module.is_input_module() or module.is_load_module()):
            try:
                from_input += list(module.get_image_names()) if hasattr(module, "get_image_names") else []
            except Exception:
                pass
    needed = sorted(set(subscribed) - set(provided))
    return {"modules": modules, "images_needed": needed, "images_made": sorted(set(provided)),
            "input_images": sorted(set(from_input)), "objects": objects}


def image_sets(pipeline, file_list):
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.workspace import Workspace
    from cellprofiler_core.image import ImageSetList

    pipeline.read_file_list(file_list)
    measurements = Measurements()
    workspace = Workspace(pipeline, None, None, None, measurements, ImageSetList())
    # Only the input modules prepare: the others (ExportToDatabase creates its tables) are left alone.
    first = next((m for m in pipeline.modules() if not (m.is_input_module() or m.is_load_module())), None)
    if not pipeline.prepare_run(workspace, end_module=first):
        return {"error": "CellProfiler could not make image sets of these files (prepare_run failed)"}
    features = [f for f in measurements.get_feature_names("Image")
                if f.startswith(("FileName_", "PathName_", "URL_", "Metadata_"))]
    rows = []
    for number in measurements.get_image_numbers():
        rows.append({f: _text(measurements.get_measurement("Image", f, number)) for f in features})
    return {"image_sets": rows}


def _text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, (str, int, float)) else str(value)


def main():
    logging.disable(logging.WARNING)
    from cellprofiler_core.preferences import set_headless, set_awt_headless

    set_awt_headless(True)
    set_headless()
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.preferences import set_default_image_directory, set_default_output_directory
    from cellprofiler_core.utilities.java import start_java, stop_java

    path = sys.argv[1]
    file_list = sys.argv[2] if len(sys.argv) > 2 else None
    scratch = tempfile.mkdtemp(prefix="mdp-inspect-")  # nothing is written outside it
    set_default_output_directory(scratch)
    set_default_image_directory(scratch)
    if file_list:
        start_java()  # NamesAndTypes makes image sets in Java
    try:
        pipeline = Pipeline()
        errors = []
        pipeline.add_listener(lambda _pipeline, event: errors.append(type(event).__name__)
                              if "LoadException" in type(event).__name__ else None)
        pipeline.load(os.path.expanduser(path))
        if errors:
            raise SystemExit(f"CellProfiler cannot load the pipeline {path}: a module failed to load ({errors})")
        result = describe(pipeline)
        if file_list:
            result.update(image_sets(pipeline, file_list))
        # Java logs to stdout too: the description is the one line that starts with the marker.
        sys.stdout.write(f"\n{MARKER} {json.dumps(result)}\n")
    finally:
        if file_list:
            stop_java()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

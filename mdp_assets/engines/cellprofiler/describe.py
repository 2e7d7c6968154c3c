"""What a CellProfiler pipeline needs and makes, read by cellprofiler-core (inspect_pipeline.py, run by the
CellProfiler environment's Python), not guessed from its text.

`describe_pipeline` gives a `PipelineDescription`: how the pipeline takes its input (LoadData, or the input
modules Images / Metadata / NamesAndTypes), the images the input must provide, whether it corrects
illumination itself (CorrectIlluminationApply) and which illumination functions it reads, what it saves
(SaveImages: image, file name rule, format, folder; label images from ConvertObjectsToImage), how it exports
(ExportToDatabase SQLite file, ExportToSpreadsheet CSVs) and its objects (primary, secondary, tertiary).
`match_files` asks CellProfiler which image sets its input modules make of a list of files.
`saved_file_name` says which file a SaveImages module writes for one image set, as SaveImages names it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mdp_assets.errors import MdpError

INSPECT = Path(__file__).resolve().parent / "inspect_pipeline.py"
MARKER = "MDP_PIPELINE_DESCRIPTION"  # inspect_pipeline.py's line
OUTPUT_FOLDER = "Default Output Folder"
OUTPUT_SUBFOLDER = "Default Output Folder sub-folder"


@dataclass(frozen=True)
class SavedImage:
    module: int
    image: str
    method: str  # "From image filename", "Single name" or "Name with metadata"/"Sequential numbers"
    prefix_image: str | None
    single_name: str
    suffix: str
    extension: str
    subfolder: str  # under the output folder
    when: str
    objects: str | None  # the objects whose labels this image is (ConvertObjectsToImage), else None
    bit_depth: str


@dataclass(frozen=True)
class Export:
    kind: str  # "database" (SQLite) or "spreadsheet" (CSV)
    file_name: str | None  # the SQLite file
    subfolder: str
    table_prefix: str


@dataclass(frozen=True)
class Correction:
    image: str  # the image corrected
    output: str
    function: str  # the illumination function image it uses
    method: str  # Divide or Subtract


@dataclass(frozen=True)
class PipelineDescription:
    path: Path
    sha256: str
    input: str  # "LoadData" or "NamesAndTypes"
    images_needed: tuple[str, ...]
    corrections: tuple[Correction, ...]
    illumination_made: tuple[str, ...]  # CorrectIlluminationCalculate outputs
    calculations: tuple[tuple[str, str], ...]  # (illumination function, the image it is calculated from)
    saves: tuple[SavedImage, ...]
    export: Export | None
    primary: tuple[str, ...]
    secondary: tuple[tuple[str, str], ...]  # (object, from primary)
    tertiary: tuple[tuple[str, str, str], ...]  # (object, larger, smaller)
    group_by: tuple[str, ...]  # metadata the pipeline groups its image sets by
    rules: tuple[tuple[str, str], ...] = field(default=())  # NamesAndTypes: (image name, rule)
    modules: tuple[str, ...] = field(default=())
    # Metadata fields the modules after the input read (a \g<Field> in a setting, grouping): LoadData gives them.
    metadata_needed: tuple[str, ...] = field(default=())

    @property
    def corrects_itself(self) -> bool:
        return bool(self.corrections)

    def module_names(self) -> str:
        return ", ".join(self.modules)

    def loaddata_channels(self) -> tuple[set[str], set[str]]:
        """For a LoadData pipeline: the channels of the Orig<channel> and of the Illum<channel> images it reads."""
        orig = {n.removeprefix("Orig") for n in self.images_needed if n.startswith("Orig")}
        illum = {n.removeprefix("Illum") for n in self.images_needed if n.startswith("Illum")}
        return orig, illum

    def saved_corrected(self) -> list[SavedImage]:
        """SaveImages of corrected images (a CorrectIlluminationApply output), every cycle."""
        outputs = {c.output: c for c in self.corrections}
        return [s for s in self.saves if s.image in outputs and s.objects is None]

    def saved_functions(self) -> list[SavedImage]:
        return [s for s in self.saves if s.image in self.illumination_made]

    def saved_labels(self) -> dict[str, SavedImage]:
        """Object name -> the SaveImages module that saves its label image."""
        return {s.objects: s for s in self.saves if s.objects is not None}

    def correction_of(self, output: str) -> Correction | None:
        return next((c for c in self.corrections if c.output == output), None)


def _settings(module: dict) -> list[tuple[str, str]]:
    return [(s["text"], s["value"]) for s in module["settings"]]


def _first(settings: list[tuple[str, str]], text: str, default: str = "") -> str:
    return next((v for t, v in settings if t == text), default) or default


def _all(settings: list[tuple[str, str]], text: str) -> list[str]:
    return [v for t, v in settings if t == text]


def _folder(value: str, path: Path, module: str) -> str:
    choice, _, custom = (value or OUTPUT_FOLDER).partition("|")
    if choice == OUTPUT_FOLDER:
        return ""
    if choice == OUTPUT_SUBFOLDER and "\\g<" not in custom:
        return custom.strip("/")
    raise MdpError(f"{module} writes to {choice!r} {custom!r}; mdp reads a pipeline's output from CellProfiler's "
                   "output folder: set it to 'Default Output Folder' (or a fixed sub-folder of it)", path=path)


def interpret(raw: dict, path: Path, sha256: str) -> PipelineDescription:
    """A PipelineDescription from inspect_pipeline.py's JSON."""
    modules = raw["modules"]
    names = [m["name"] for m in modules]
    input_kind = "LoadData" if "LoadData" in names else "NamesAndTypes"
    corrections, made, saves, primary, secondary, tertiary, group_by = [], [], [], [], [], [], []
    labels = {}
    export, rules = None, []
    for module in modules:
        s, name = _settings(module), module["name"]
        if name == "CorrectIlluminationApply":
            images, outputs = _all(s, "Select the input image"), _all(s, "Name the output image")
            functions, methods = _all(s, "Select the illumination function"), _all(s, "Select how the illumination function is applied")
            corrections += [Correction(*values) for values in zip(images, outputs, functions, methods)]
        elif name == "CorrectIlluminationCalculate":
            made.append((_first(s, "Name the output image"), _first(s, "Select the input image")))
        elif name == "ConvertObjectsToImage":
            labels[_first(s, "Name the output image")] = _first(s, "Select the input objects")
        elif name == "IdentifyPrimaryObjects":
            primary.append(_first(s, "Name the primary objects to be identified"))
        elif name == "IdentifySecondaryObjects":
            secondary.append((_first(s, "Name the objects to be identified"), _first(s, "Select the input objects")))
        elif name == "IdentifyTertiaryObjects":
            tertiary.append((_first(s, "Name the tertiary objects to be identified"),
                             _first(s, "Select the larger identified objects"),
                             _first(s, "Select the smaller identified objects")))
        elif name == "NamesAndTypes":
            if _first(s, "Assign a name to") == "Images matching rules":
                rules = list(zip(_all(s, "Name to assign these images")[1:], _all(s, "Select the rule criteria")))
            else:
                rules = [(_first(s, "Name to assign these images"), "every file")]
        elif name == "Groups" and _first(s, "Do you want to group your images?") == "Yes":
            group_by += [v for v in _all(s, "Metadata category") if v and v != "None"]
        elif name == "LoadData" and _first(s, "Group images by metadata?") == "Yes":
            group_by += [v.strip() for v in _first(s, "Select metadata tags for grouping").split(",") if v.strip()]
        elif name == "SaveImages":
            if _first(s, "Select the type of image to save", "Image") != "Image":
                continue  # masks, croppings, movies, figures: not what mdp reads
            image = _first(s, "Select the image to save")
            fmt = _first(s, "Saved file format", "tiff")
            saves.append(SavedImage(
                module=module["number"], image=image, method=_first(s, "Select method for constructing file names"),
                prefix_image=_first(s, "Select image name for file prefix") or None,
                single_name=_first(s, "Enter single file name"),
                suffix=_first(s, "Text to append to the image name")
                if _first(s, "Append a suffix to the image file name?") == "Yes" else "",
                extension=fmt, subfolder=_folder(_first(s, "Output file location"), path, f"SaveImages #{module['number']}"),
                when=_first(s, "When to save", "Every cycle"), objects=None, bit_depth=_first(s, "Image bit depth"),
            ))
        elif name == "ExportToDatabase":
            if _first(s, "Database type") != "SQLite":
                raise MdpError(f"ExportToDatabase #{module['number']} writes to a {_first(s, 'Database type')} "
                               "server; mdp reads SQLite (Database type: SQLite) or ExportToSpreadsheet", path=path)
            export = Export("database", _first(s, "Name the SQLite database file", "DefaultDB.db"),
                            _folder(_first(s, "Output file location"), path, f"ExportToDatabase #{module['number']}"),
                            _first(s, "Table prefix") if _first(s, "Add a prefix to table names?") == "Yes" else "")
        elif name == "ExportToSpreadsheet" and export is None:
            export = Export("spreadsheet", None,
                            _folder(_first(s, "Output file location"), path, f"ExportToSpreadsheet #{module['number']}"),
                            _first(s, "Filename prefix") if _first(s, "Add a prefix to file names?") == "Yes" else "")
    saves = [SavedImage(**{**save.__dict__, "objects": labels.get(save.image)}) for save in saves]
    read = {name for module in modules if not module.get("input")
            for _, value in _settings(module) for name in _METADATA.findall(value or "")}
    return PipelineDescription(
        path=path, sha256=sha256, input=input_kind, images_needed=tuple(raw["images_needed"]),
        corrections=tuple(corrections), illumination_made=tuple(m[0] for m in made), calculations=tuple(made), saves=tuple(saves), export=export,
        primary=tuple(primary), secondary=tuple(secondary), tertiary=tuple(tertiary), group_by=tuple(group_by),
        rules=tuple(rules), modules=tuple(names), metadata_needed=tuple(sorted(read | set(group_by))),
    )


def _inspect(python: Path, pipeline: Path, file_list: Path | None = None) -> dict:
    if not python.exists():
        raise MdpError(f"no CellProfiler environment at {python.parent.parent}; run `make cellprofiler`")
    command = [str(python), str(INSPECT), str(pipeline)] + ([str(file_list)] if file_list else [])
    env = dict(os.environ)
    javac = next((Path(p) / "javac" for p in env.get("PATH", "").split(os.pathsep) if (Path(p) / "javac").exists()), None)
    if javac and "JAVA_HOME" not in env:
        env["JAVA_HOME"] = str(Path(os.path.realpath(javac)).parent.parent)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise MdpError(f"CellProfiler cannot read the pipeline:\n{tail}", path=pipeline)
    line = next((line for line in done.stdout.splitlines() if line.startswith(MARKER)), None)
    if line is None:
        raise MdpError(f"CellProfiler gave no description of the pipeline:\n{done.stdout[-2000:]}", path=pipeline)
    try:
        return json.loads(line[len(MARKER):])
    except json.JSONDecodeError as exc:
        raise MdpError(f"CellProfiler's description of the pipeline is not JSON: {exc}", path=pipeline) from None


@functools.lru_cache(maxsize=64)
def _describe(python: str, pipeline: str, sha256: str) -> PipelineDescription:
    return interpret(_inspect(Path(python), Path(pipeline)), Path(pipeline), sha256)


def describe_pipeline(python: Path, pipeline: Path) -> PipelineDescription:
    """The pipeline as cellprofiler-core reads it (cached per file content)."""
    if not pipeline.exists():
        raise MdpError("CellProfiler pipeline not found", path=pipeline)
    sha256 = hashlib.sha256(pipeline.read_bytes()).hexdigest()
    return _describe(str(python), str(pipeline.resolve()), sha256)


def match_files(python: Path, pipeline: Path, paths: list[Path]) -> list[dict]:
    """The image sets CellProfiler's input modules make of these files (FileName_/PathName_/URL_<image>,
    Metadata_<field> per set), in CellProfiler's order."""
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder) / "files.txt"
        listing.write_text("".join(f"{Path(p).resolve().as_uri()}\n" for p in paths))
        raw = _inspect(python, pipeline, listing)
    return raw.get("image_sets", [])  # CellProfiler's prepare_run fails when its input modules make no image set


_METADATA = re.compile(r"\\g<([^>]+)>")


def saved_file_name(save: SavedImage, image_set: dict) -> str:
    """The file SaveImages writes for one image set (its FileName_ and Metadata_ values), as CellProfiler's
    SaveImages.get_filename makes it."""
    def metadata(text: str) -> str:
        return _METADATA.sub(lambda m: str(image_set.get(f"Metadata_{m.group(1)}", "")), text)

    if save.method == "From image filename":
        source = image_set.get(f"FileName_{save.prefix_image}")
        if not source:
            raise MdpError(f"SaveImages #{save.module} names its files after {save.prefix_image!r}, which the "
                           "image set does not have")
        name = os.path.splitext(str(source))[0] + metadata(save.suffix)
    elif save.method in ("Single name", "Name with metadata"):
        name = metadata(save.single_name)
    else:
        raise MdpError(f"SaveImages #{save.module} numbers its files sequentially ({save.method}); mdp needs file "
                       "names it can tie to a site: 'From image filename' or 'Single name' with \\g<Well>/\\g<Site>")
    return str(Path(save.subfolder) / f"{name}.{save.extension}") if save.subfolder else f"{name}.{save.extension}"

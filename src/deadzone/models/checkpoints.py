"""Load models (Hugging Face directory, hub id, builtin preset); stream tensors from safetensors.

``MODEL`` specs:

- a directory in Hugging Face format (``config.json`` plus safetensors weights);
- a single ``.safetensors`` file (analysis only; ``config.json`` beside it is used if present);
- a hub id such as ``gpt2`` (downloaded with ``huggingface_hub``; offline this is an error);
- ``builtin:tiny`` / ``builtin:paper`` (pretrained on first use, then cached).

Nothing here unpickles a file: weights are read from safetensors, and a checkpoint holding only
``pytorch_model.bin`` is loaded by ``transformers`` with ``torch.load(weights_only=True)``; one
whose pickle holds anything but tensors is refused in one line, never executed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from deadzone.errors import DeadzoneError
from deadzone.locks import file_lock
from deadzone.models.sites import FROM_CONFIG, Site, discover, find_sites, orientation, site_matrix

BUILTIN = "builtin:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]

log = logging.getLogger(__name__)


def resolve(spec: str) -> Path:
    """A local path for ``spec``: the directory or file itself, the builtin cache, or a download."""
    if spec.startswith(BUILTIN):
        return _builtin(spec.removeprefix(BUILTIN))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DeadzoneError(f"{spec} is not a model directory (no config.json)")
        return path
    if path.is_file():
        if path.suffix != ".safetensors":
            raise DeadzoneError(f"{spec} is not a model directory or a .safetensors file")
        return path
    if spec.startswith((".", "/", "~")) or path.suffix or spec.count("/") > 1:
        raise DeadzoneError(f"{spec} does not exist")
    return _download(spec)


def _builtin(name: str) -> Path:
    """The cached model of preset ``name``, pretrained first if it is not there yet.

    Two processes asking for the same uncached preset at once (two commands, or the processes
    of one ``accelerate launch``) pretrain it once: the first holds a lock file beside the
    cache entry while it pretrains, the others wait for it, then load what it saved.
    """
    from deadzone.data import corpus
    from deadzone.models.presets import builtin_dir, get_preset
    from deadzone.models.pretraining import pretrain

    preset = get_preset(name)
    path = builtin_dir(preset.name, corpus.corpus_hash())
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.parent / f".{path.name}.lock", wait=True):
        if not (path / "config.json").is_file():  # not saved by the holder we waited for
            log.warning("pretraining builtin:%s once; it will be cached in %s", name, path)
            pretrain(preset.name, path)
    return path


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=WEIGHT_PATTERNS))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise DeadzoneError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub (offline, or no such model): "
            f"{_first_line(e)}"
        ) from None


def load_model(spec: str, *, dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` for ``spec``; the tokenizer is None when the directory has none.

    A checkpoint whose weights do not match the architecture its config names (a weight
    missing, one the architecture has no place for, or one of another shape) is refused with
    the keys named: a missing weight would otherwise be freshly initialised and trained as if
    it were the model's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(spec)
    if path.is_file():
        raise DeadzoneError(f"{spec} is a bare .safetensors file; training needs a model directory")
    check_checkpoint(path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, output_loading_info=True
        )
    except pickle.UnpicklingError as e:
        raise unsafe_pickle_error(path, e) from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DeadzoneError(f"cannot load a causal LM from {spec}: {_first_line(e)}") from None
    check_loading_info(spec, info)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return model, None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise DeadzoneError(f"cannot load the tokenizer in {spec}: {_first_line(e)}") from None
    return model, tokenizer


def pristine_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` to train, as it was loaded, without a second copy in memory.

    A model loaded from a safetensors directory holds its weights as memory maps of the files,
    read page by page when used. A deep copy reads every page, so the pristine model then takes
    as much memory as the copy that trains. Here the copy is read back from the files instead,
    and the pristine model's pages stay unread: one copy of the weights per process. It is
    used only where the files still hold the model's weights (its type, parameter names and
    a sample of values match, bit for bit) and keeps its trainable flags and mode; anything
    else (a model built in memory, or changed since it was loaded) is deep-copied.
    """
    reread = _reread(model)
    if reread is None:
        return copy.deepcopy(model)
    for p, q in zip(model.parameters(), reread.parameters(), strict=True):
        q.requires_grad_(p.requires_grad)
    return reread.train(model.training)


def _reread(model: torch.nn.Module) -> torch.nn.Module | None:
    """``model`` loaded again from the directory it came from, if it matches; else None."""
    from transformers import AutoModelForCausalLM

    source = Path(str(getattr(model, "name_or_path", "") or ""))
    if not str(source) or not source.is_dir() or not _shards(source):
        return None
    dtype = next(model.parameters()).dtype
    try:
        reread = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError):
        return None
    if type(reread) is not type(model) or not _same_sample(model, reread):
        return None
    return reread


def _same_sample(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same parameter names and shapes, and the same first and last value of each.

    Only the ends: a parameter's ends lie next to its neighbours' in the file, so reading them
    maps few pages of the memory-mapped weights, where a value from the middle of each mapped
    another 0.4x of a 135M model's checkpoint into the resident set (``bench/memory.py``)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys():
        return False
    for name, x in pa.items():
        y = pb[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        n = x.numel()
        at = torch.tensor(sorted({0, n - 1}), dtype=torch.long)
        fx, fy = x.detach().reshape(-1)[at], y.detach().reshape(-1)[at]
        if not torch.equal(fx.view(-1).cpu(), fy.view(-1).cpu()):
            return False
    return True


def unsafe_pickle_error(directory: Path, error: Exception) -> DeadzoneError:
    """The one-line refusal of a pickled checkpoint holding more than tensors.

    ``torch.load(weights_only=True)`` refused it without executing it; the file named is the
    first pickled weight file that it refuses again (memory-mapped, so nothing is read twice
    but the pickle's own bytes).
    """
    culprit = None
    for file in sorted(f for f in directory.iterdir() if f.suffix in (".bin", ".pt", ".pth")):
        try:
            torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            culprit = file
            break
        except (OSError, RuntimeError):
            continue  # not a zip-format pickle: not the file torch refused as unsafe
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" ({found.group(1)})" if found else ""
    return DeadzoneError(
        f"{culprit or directory} holds Python objects besides tensors{what}, which deadzone "
        "does not unpickle; convert the checkpoint to safetensors where you trust it "
        "(from_pretrained, then save_pretrained(..., safe_serialization=True))"
    )


def check_loading_info(spec: str, info: dict) -> None:
    """Refuse a load that left weights missing, unexpected or of the wrong shape, naming them."""
    problems = []
    for kind in ("missing", "unexpected", "mismatched"):
        found = info.get(f"{kind}_keys") or ()
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in found)
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{kind} weight(s) {shown}")
    if info.get("error_msgs"):
        problems.append(_first_line(Exception(info["error_msgs"][0])))
    if problems:
        raise DeadzoneError(f"{spec} does not match its architecture: {'; '.join(problems)}")


def absent_sites(checkpoint: Checkpoint) -> list[str]:
    """Names of the sites the checkpoint's config architecture has but its weights lack.

    The architecture is built on the meta device (no memory, no weights). Empty when there is
    no ``config.json`` or transformers cannot build a causal LM from it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve(checkpoint.spec)
    directory = path.parent if path.is_file() else path
    if checkpoint.model is not None or not (directory / "config.json").is_file():
        return []  # a loaded model is complete (load_model refuses one that is not)
    try:
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    present = {s.name for s in checkpoint.sites}
    return [s.name for s in find_sites(model) if s.name not in present]


# --- what identifies a model, and what it allows ------------------------------------------------

# Files of a model directory that decide what a run computes, besides the weights. (Not
# tokenizer_config.json: saving a tokenizer again adds keys to it that change nothing.)
FINGERPRINT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# Keys of config.json that record who saved it, not what the model is.
CONFIG_NOISE = ("transformers_version", "_name_or_path")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAMPLES, SAMPLE_BYTES = 16, 4096


def files_fingerprint(directory: str | Path) -> str:
    """sha256 identifying the model in ``directory``, cheap on multi-gigabyte checkpoints.

    It covers the config (less the keys that only say who saved it) and tokenizer files
    whole, and of each weight file its name, size, safetensors header (names, dtypes, shapes,
    offsets) and ``SAMPLES`` blocks of ``SAMPLE_BYTES`` spread evenly over its tensor data.
    Not every byte is read, but training
    changes nearly every weight, so a model re-saved at the same path after more training
    gets another fingerprint, while the same weights saved again keep theirs.
    """
    directory = Path(directory)
    h = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        file = directory / name
        if file.is_file():
            h.update(f"{name}\0".encode())
            h.update(_config_bytes(file) if name == "config.json" else file.read_bytes())
    weights = sorted(f for f in directory.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    for file in weights:
        size = file.stat().st_size
        h.update(f"\0{file.name}\0{size}\0".encode())
        with file.open("rb") as f:
            start = 0
            if file.suffix == ".safetensors" and size >= 8:
                header_len = int.from_bytes(f.read(8), "little")
                h.update(f.read(header_len))
                start = min(size, 8 + header_len)
            span = max(0, size - start - SAMPLE_BYTES)
            for i in range(SAMPLES):
                f.seek(start + span * i // max(1, SAMPLES - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _config_bytes(file: Path) -> bytes:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return file.read_bytes()
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in CONFIG_NOISE}
    return json.dumps(config, sort_keys=True).encode()


def context_length(model) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class Checkpoint:
    """The sites of a checkpoint and a way to read their matrices one at a time.

    Safetensors checkpoints are streamed: only one matrix is materialised at a time and the
    model is never built. Other checkpoints are loaded as a model first. ``orientation`` says
    how the layout of stored matrices is known (:func:`deadzone.models.sites.orientation`).
    """

    spec: str
    sites: list[Site]
    files: dict[str, Path]  # param name -> shard holding it; empty when a model is loaded
    model: torch.nn.Module | None = None
    orientation: str = FROM_CONFIG

    def matrices(self, sites: list[Site] | None = None) -> Iterator[tuple[Site, torch.Tensor]]:
        """``(site, matrix out x in)`` for each site, shard by shard.

        From safetensors, each matrix is a view of its own memory map of the shard: its pages
        are read when it is used and let go when it is dropped, so the memory a stream holds
        is that of the matrices still in use, not of whole shards.
        """
        sites = self.sites if sites is None else sites
        if self.model is not None:
            for site in sites:
                yield site, site_matrix(self.model, site)
            return
        by_file: dict[Path, list[Site]] = defaultdict(list)
        for site in sites:
            by_file[self.files[site.param_name]].append(site)
        for file, file_sites in by_file.items():
            for site in file_sites:
                with safe_open(file, framework="pt") as f:
                    tensor = f.get_tensor(site.param_name)
                yield site, site.matrix(tensor)
                del tensor  # the caller's reference alone keeps the map alive


def open_checkpoint(spec: str) -> Checkpoint:
    """Sites of ``spec``, read from safetensors headers when possible (no model is built)."""
    path = resolve(spec)
    config = _read_config(path.parent if path.is_file() else path)
    shards = [path] if path.is_file() else _shards(path)
    if not shards:
        model, _ = load_model(spec)
        return Checkpoint(spec, find_sites(model), {}, model)
    files: dict[str, Path] = {}
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for shard in shards:
        for key, shape in _read_shapes(shard):
            files[key] = shard
            shapes.append((key, shape))
    model_type = config.get("model_type")
    conv1d, source = orientation(shapes, model_type if isinstance(model_type, str) else None)
    sites = discover(shapes, "", conv1d=conv1d)
    if config.get("tie_word_embeddings", True) and any(s.name == "embed" for s in sites):
        sites = [s for s in sites if s.name != "lm_head"]
    return Checkpoint(spec, sites, files, orientation=source)


def check_checkpoint(path: Path) -> None:
    """Fail in one line unless the config (if any) is a JSON object and every safetensors file
    of ``path`` (a model directory or one file) has a valid header covering the whole file."""
    if path.is_dir():
        _read_config(path)
    for shard in [path] if path.is_file() else _shards(path):
        _read_shapes(shard)


def _read_shapes(shard: Path) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, stored shape)`` of every tensor in ``shard``, from its header alone."""
    try:
        with safe_open(shard, framework="pt") as f:
            return [(key, tuple(f.get_slice(key).get_shape())) for key in f.keys()]  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise DeadzoneError(f"{shard} is not a valid safetensors file: {_first_line(e)}") from None


def _read_json(file: Path) -> object:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DeadzoneError(f"{file} is not valid JSON: {e}") from None
    except OSError as e:
        raise DeadzoneError(f"cannot read {file}: {e.strerror or e}") from None


def _read_config(directory: Path) -> dict:
    file = directory / "config.json"
    if not file.is_file():
        return {}
    config = _read_json(file)
    if not isinstance(config, dict):
        raise DeadzoneError(f"{file} is not a JSON object")
    text_config = config.get("text_config")
    return {**(text_config if isinstance(text_config, dict) else {}), **config}


def _shards(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(name, str) for name in weight_map.values()
        ):
            raise DeadzoneError(f"{index} has no 'weight_map' object of tensor -> file names")
        return sorted({directory / name for name in weight_map.values()})
    return sorted(directory.glob("*.safetensors"))

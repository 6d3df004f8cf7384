"""What text K/V projections read, as a run goes (summed into second moments, or kept token by token): the hooks of
:func:`textloc.engine.text_input_moments` and :func:`textloc.engine.paired_text_input_moments`."""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook

from textloc.engine.eager import eager
from textloc.engine.layer_hooks import LayerHooks, attends
from textloc.engine.units import AttentionLayer


def attended_tokens(path: str, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The text tokens ``text`` (``[rows, tokens, features]``) that projection ``path`` read, where its
    layer attends to them (``mask``: the layer's text mask; ``None``: every token), as ``[tokens, features]`` float32."""
    tokens = text.detach().float()
    if mask is not None:
        keep = attends(mask).reshape(mask.shape[0], -1).expand(tokens.shape[0], -1)
        if keep.shape[-1] != tokens.shape[1]:
            raise ValueError(f"{path} read {tokens.shape[1]} text tokens but its layer's mask covers {keep.shape[-1]}.")
        tokens = tokens[keep.to(tokens.device)]
    return tokens.reshape(-1, tokens.shape[-1])


class InputMoments:
    """Sums ``x xᵀ`` over the text tokens each hooked projection reads, where the layer attends to them."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, path: str, text: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Add the text tokens ``text`` that projection ``path`` read (see :func:`attended_tokens`)."""
        tokens = attended_tokens(path, text, mask)
        moment = tokens.T @ tokens  # summed where it is computed: one copy to the host at the end, not one a call
        if path in self.sums:
            self.sums[path] += moment
            self.counts[path] += tokens.shape[0]
        else:
            self.sums[path], self.counts[path] = moment, tokens.shape[0]

    def moments(self) -> dict[str, torch.Tensor]:
        """Each projection's ``E[x xᵀ]`` over every token added, on the CPU."""
        return {path: (total / self.counts[path]).cpu() for path, total in self.sums.items()}


class InputTokens:
    """Keeps the text tokens each hooked projection reads, where the layer attends to them, in the
    order the calls came (one pipeline call's worth at a time: :func:`take` empties it)."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[torch.Tensor]] = {}

    def add(self, path: str, text: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Keep the text tokens ``text`` that projection ``path`` read (see :func:`attended_tokens`)."""
        self.tokens.setdefault(path, []).append(attended_tokens(path, text, mask))

    def take(self) -> dict[str, torch.Tensor]:
        """Each projection's tokens so far, ``[tokens, features]``; the store is emptied."""
        taken = {path: torch.cat(chunks) for path, chunks in self.tokens.items()}
        self.tokens = {}
        return taken


ProjectionInputs = InputMoments | InputTokens


class ProjectionInputHook(ModelHook):
    """On a text K/V projection: its input's text tokens go to an :class:`InputMoments` or :class:`InputTokens`."""

    def __init__(self, hooks: LayerHooks, path: str, inputs: ProjectionInputs):
        super().__init__()
        self.hooks, self.path, self.inputs = hooks, path, inputs

    @eager
    def pre_forward(self, module, *args, **kwargs):
        inputs = args[0] if args else kwargs["input"]
        self.inputs.add(self.path, self.hooks.text_slice(inputs), self.hooks.mask)
        return args, kwargs


def text_kv_columns(layer: AttentionLayer) -> dict[str, list[slice] | None]:
    """The full module paths of ``layer``'s text K/V projections (one where they are fused), each with
    the output columns that are its keys or values (``None``: all of them; a fused projection's K and V blocks)."""
    route = layer.route
    if route is None or route.kind == "pooled":
        raise ValueError(f"{layer.name} has no text keys or values to record the inputs of (a {layer.kind} unit).")
    columns: dict[str, list[slice] | None] = {}
    for projection in (route.key, route.value):
        path, block = f"{layer.name}.{projection.name}", projection.columns(layer.module)
        if path not in columns:
            columns[path] = None if block is None else [block]
        elif block is not None and columns[path] is not None:
            columns[path].append(block)
    return columns

"""What a family writes its fused training step with (horizontally fused trials, harness/training/packs.py).

HFTA (Wang et al., MLSys 2021) trains P trials of one architecture as one model: grouped
convolutions, batched matmuls, per-member optimizer state. Here the members stay ordinary models
of their family, each with its own optimizers; a `Stack` stacks the members' parameters and
buffers along a new leading dimension and runs any of the family's modules on all members at once
through torch.func.vmap(functional_call(...)). PyTorch runs a vmapped convolution as one grouped
convolution and a vmapped linear layer as one batched matmul, so this is HFTA's fusion without
rewriting a model. Gradients flow back through the stack to each member's own parameters.

A family declares `FUSED = Fused(scalars=..., step=..., switches=...)` (or `FUSED = None`):
  scalars  the hyperparameters that may differ inside a pack: scalars that change no tensor shape
           (learning rates, betas, weight decay, loss weights, the D:G ratio, dropout rates); every
           other parameter (latent size, width, batch size) must be equal in a pack
  switches those scalars whose zero builds other modules (a dropout rate of 0 builds no Dropout):
           members agree on which of them are zero
  step     step(stack, x, noise, params, optimizers, fast, progress) -> one output dict per member
           (the members' models are stack.models): one update of every member on its own batch
           x[p] (P, B, C, H, W) and noise[p] (P, B, Z), the noise its train_step draws from the
           global generator when trained alone; progress[p] is what its train_step would get
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

FusedStep = Callable[..., list[dict[str, Tensor]]]


@dataclass(frozen=True)
class Fused:
    """How a family trains as a fused pack."""

    scalars: frozenset[str]  # parameters that may differ between members of one pack
    step: FusedStep
    switches: frozenset[str] = frozenset()  # scalars whose zero changes the modules built


class MemberDropout(nn.Module):
    """nn.Dropout with a rate per member: inside a Stack's pass `rate` is that member's (batched by
    vmap), and the mask is drawn per member. (A lone trial's nn.Dropout draws its masks differently,
    so with dropout a member matches its lone twin in distribution, not number for number.)"""

    def __init__(self) -> None:
        super().__init__()
        self.rate: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.rate) / (1 - self.rate)


def template_of(model: nn.Module) -> nn.Module:
    """A storage-free copy of a member (meta tensors): the module code a Stack runs, its Dropouts
    made MemberDropouts."""
    template = copy.deepcopy(model).to("meta")
    for path, module in list(template.named_modules()):
        if isinstance(module, nn.Dropout):
            parent, _, name = path.rpartition(".")
            template.get_submodule(parent).register_module(name, MemberDropout().train(module.training))
    return template


class Stack:
    """The members' parameters and buffers, stacked along dim 0 (P, ...), and the template to run
    them through. Parameters are stacked with autograd (gradients reach the members' own); buffers
    (BatchNorm statistics) are stacked copies, updated in place by the vmapped forward passes and
    written back to the members by `write_back`."""

    def __init__(self, template: nn.Module, models: Sequence[nn.Module]):
        self.template, self.models = template, list(models)
        self.params = {name: torch.stack([m.get_parameter(name) for m in self.models])
                       for name, _ in template.named_parameters()}
        self.buffers = {name: torch.stack([m.get_buffer(name) for m in self.models])
                        for name, _ in template.named_buffers()}
        self.device = next(iter(self.params.values())).device
        self.rates = {path: torch.tensor([m.get_submodule(path).p for m in self.models], device=self.device)
                      for path, module in template.named_modules() if isinstance(module, MemberDropout)}

    def __call__(self, path: str, *inputs: Tensor, **kwargs: Any) -> Any:
        """The template's submodule `path` ("" for the whole model) on every member: inputs and
        outputs carry the member on dim 0. Random operations inside (dropout) draw per member."""
        module = self.template.get_submodule(path)
        prefix = f"{path}." if path else ""
        params = {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}
        for name in [k for k in self.buffers if k.startswith(prefix)]:  # fresh tensors for this pass to update in
            self.buffers[name] = self.buffers[name].clone()  # place: an earlier pass's backward may need the old
        buffers = {k[len(prefix):]: v for k, v in self.buffers.items() if k.startswith(prefix)}
        rates = self.rates  # every Dropout's, absolute paths: those outside `path` go unused

        def one(p: dict[str, Tensor], b: dict[str, Tensor], r: dict[str, Tensor], *xs: Tensor) -> Any:
            for path_, rate in r.items():  # this member's dropout rates
                self.template.get_submodule(path_).rate = rate
            return functional_call(module, (p, b), xs, kwargs)

        try:
            return vmap(one, randomness="different")(params, buffers, rates, *inputs)
        finally:
            for path_ in rates:
                self.template.get_submodule(path_).rate = None

    def snapshot(self, path: str) -> dict[str, Tensor]:
        """Copies of the buffers under `path`, for `restore`."""
        return {k: v.clone() for k, v in self.buffers.items() if k.startswith(f"{path}.")}

    def restore(self, saved: Mapping[str, Tensor], members: Tensor) -> None:
        """Put the snapshot's buffers back for the members where `members` (P,) is True: their
        statistics stay as if the passes since the snapshot had not run (they would not have, alone)."""
        for name, value in saved.items():
            keep = members.view(-1, *[1] * (value.dim() - 1))
            self.buffers[name] = torch.where(keep, value, self.buffers[name])

    def write_back(self) -> None:
        """The stacked buffers into each member's own."""
        with torch.no_grad():
            for name, stacked in self.buffers.items():
                for member, model in zip(stacked, self.models):
                    model.get_buffer(name).copy_(member)

    def scalar(self, values: Sequence[float]) -> Tensor:
        """Per-member numbers as a (P,) float tensor on the members' device."""
        return torch.tensor([float(v) for v in values], device=self.device)


def zero_grads(optimizers: Sequence[Mapping[str, torch.optim.Optimizer]]) -> None:
    """Every member's every optimizer: a member's other network may hold gradients from this step's
    backward, as it would alone, and they are cleared before that network's next step."""
    for member in optimizers:
        for optimizer in member.values():
            optimizer.zero_grad(set_to_none=True)


def per_member(stats: Mapping[str, Tensor], index: int) -> dict[str, Tensor]:
    """Member `index`'s detached outputs from (P,)-shaped ones."""
    return {key: value[index].detach() for key, value in stats.items()}

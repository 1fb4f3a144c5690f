"""The positions of a batch that carry loss, picked out before the batch reaches the GPU.

Picking them on the device (a boolean mask over ``[rows, T]``) makes the host
wait there for the forward pass: the number of picked positions decides the
shape of everything after. Picked on the host while the step is packed, they
travel with the batch as an index, and the step runs from its first kernel to
its optimizer update without the host waiting once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ownchat.chat_template import IGNORE_INDEX


@dataclass(frozen=True)
class LossPositions:
    """The hidden states that predict a weighted target, with those targets and weights.

    ``index`` (int64 ``[N]``) points into the final hidden states flattened
    to ``[rows * T, hidden]``: position ``t`` of row ``r`` is ``r * T + t``
    and predicts ``labels[r, t + 1]``, which is ``targets[i]`` (int64), with
    weight ``weights[i]`` (float32, never 0). ``weight_sum`` is the sum of
    ``weights``, a float32 scalar: the loss's denominator.
    """

    index: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    weight_sum: torch.Tensor

    @classmethod
    def of(cls, labels: torch.Tensor, token_weights: torch.Tensor) -> LossPositions:
        """The positions of ``labels`` ``[rows, T]`` (-100 where no loss is taken).

        ``token_weights`` is float ``[rows, T]``, aligned with ``labels``
        (``PackedBatch.token_weights``), or ``[rows]``, one weight a row
        (``Batch.weights``). Positions of weight 0 are left out. On a GPU this
        waits for ``labels`` and ``token_weights``; the packer calls it on
        the host.
        """
        targets = labels[:, 1:]
        if token_weights.dim() == 1:
            weights = token_weights[:, None].expand(targets.shape)
        else:
            weights = token_weights[:, 1:]
        weights = weights.float() * (targets != IGNORE_INDEX)
        keep = weights != 0
        rows, columns = keep.nonzero(as_tuple=True)
        kept_weights = weights[keep]
        return cls(
            index=rows * labels.shape[1] + columns,
            targets=targets[keep],
            weights=kept_weights,
            weight_sum=kept_weights.sum(),
        )

    @property
    def count(self) -> int:
        """How many positions carry loss."""
        return int(self.index.shape[0])

    def to(self, device: torch.device) -> LossPositions:
        """The same positions on ``device`` (see :func:`move_to`)."""
        return LossPositions(
            move_to(self.index, device),
            move_to(self.targets, device),
            move_to(self.weights, device),
            move_to(self.weight_sum, device),
        )


def move_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from the host to a GPU through pinned memory, without waiting.

    A copy from ordinary memory would hold the host until the previous step's
    kernels are done, when it could be launching this step's forward behind them.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)

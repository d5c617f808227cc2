"""Training losses: L1, and the supervised contrastive loss on the body's output tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CON_TEMPERATURE = 0.07  # the authors' pre-training value (they weight the loss 0.1 beside L1)


def contrastive_loss(tokens: Tensor, temperature: float = CON_TEMPERATURE) -> Tensor:
    """Supervised contrastive loss over (B, N, D) tokens: tokens of the same image are positives.

    Each token is an anchor; its positives are the other N - 1 tokens of its image, and the
    denominator runs over every other token of the batch. Tokens are L2-normalised; the loss is
    the mean over anchors of -mean_p log softmax(z_a . z_p / temperature).
    """
    b, n, _ = tokens.shape
    if n < 2:
        raise ValueError("the contrastive loss needs at least two tokens per image")
    z = F.normalize(tokens.reshape(b * n, -1).float(), dim=1)
    logits = z @ z.t() / temperature
    self_mask = torch.eye(b * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    image = torch.arange(b, device=z.device).repeat_interleave(n)
    positive = (image[:, None] == image[None, :]) & ~self_mask
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()


def l1_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error."""
    return F.l1_loss(output.float(), target.float())

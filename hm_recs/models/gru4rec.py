"""GRU4Rec (Hidasi et al.), the whole model in one file, with the features that make it GRU4Rec.

* **Session-parallel mini-batches.** ``batch_size`` sessions run side by side; at every step each
  slot feeds its current item and predicts the next. When a slot's session ends, the next session
  takes the slot and that slot's hidden state is reset to zero. Sessions are taken in the order of
  their first event, so training follows time.
* **Output sampling.** A step scores only the mini-batch's own targets plus ``n_sample`` extra items
  drawn with probability proportional to support ** ``sample_alpha``, from a store of pre-drawn
  samples kept on the training device (refilled when used up). The whole catalogue is never scored
  in training.
* **Losses.** Cross-entropy over the sampled scores with logQ correction in the authors' unnormalised
  form (``logq`` times: the log of the raw support count for the mini-batch's own targets, and
  ``sample_alpha`` times that log for the sampled items, subtracted from the scores), and BPR-max
  (softmax-weighted BPR over the negatives plus ``bpreg`` times the softmax-weighted squared scores)
  with an optional ELU on the scores (``elu_param``).
* **Embeddings.** ``constrained_embedding``: one matrix is both the input embedding and the output
  weights; ``embedding > 0``: a separate input embedding; otherwise one-hot input (a sparse
  ``n_items x 3H`` input matrix of the first GRU layer).
* **Regularisation.** Dropout on the input embedding and after every GRU layer; a layer's dropped-out
  output is also its next hidden state, as in the authors' code.
* **Optimiser.** Adagrad with momentum that updates only the rows of the item matrices a step
  touched (sparse updates), so a step costs O(batch + n_sample), not O(catalogue).

Evaluation ranks the target against every training item (full ranking) with conservative ties
(rank = number of items scoring at least as high), starts every test session from a zero hidden
state, and averages Recall@K and MRR@K over prediction events. Events whose target (or the whole
session's items) never appeared in training cannot be scored and are counted as skipped, as the
authors' evaluation does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from hm_recs.evaluation.metrics import DEFAULT_KS

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
REPEAT_POLICIES = ("collapse", "keep")


@dataclass(frozen=True)
class GRU4RecConfig:
    layers: tuple[int, ...] = (100,)
    loss: str = "cross-entropy"  # or "bpr-max"
    constrained_embedding: bool = True
    embedding: int = 0  # size of a separate input embedding; 0 with constrained_embedding=False: one-hot
    batch_size: int = 64
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048
    sample_alpha: float = 0.5
    bpreg: float = 1.0
    elu_param: float = 0.5
    logq: float = 0.0
    n_epochs: int = 10
    sample_store_size: int = 10_000_000
    # consecutive rows of one article in a session (extra units of one purchase): "collapse" keeps
    # one (the shared protocol's events do the same), "keep" trains on them as they are
    repeats: str = "collapse"
    seed: int = 0

    def __post_init__(self):
        if self.loss not in ("cross-entropy", "bpr-max"):
            raise ValueError(f"loss must be cross-entropy or bpr-max, got {self.loss!r}")
        if self.repeats not in REPEAT_POLICIES:
            raise ValueError(f"repeats must be one of {REPEAT_POLICIES}, got {self.repeats!r}")
        if not self.layers or min(self.layers) < 1:
            raise ValueError("layers must hold at least one positive size")

    def with_overrides(self, **changes) -> GRU4RecConfig:
        changes = {k: (tuple(v) if k == "layers" else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GRU4RecConfig:
        d = dict(d)
        d["layers"] = tuple(d["layers"])
        return cls(**d)

    @classmethod
    def from_param_string(cls, ps: str, **defaults) -> GRU4RecConfig:
        """A configuration from the official code's ``-ps`` string, e.g.
        ``loss=cross-entropy,layers=100/100,batch_size=32,constrained_embedding=True`` (layers joined
        by ``/``; ``embedding=layersize`` means the first layer's size)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict = dict(defaults)
        for part in filter(None, (p.strip() for p in ps.split(","))):
            key, sep, raw = part.partition("=")
            if not sep or key not in fields:
                raise ValueError(
                    f"-ps {ps!r}: unknown parameter {key!r} (known: {', '.join(sorted(fields))})"
                )
            if key == "layers":
                values[key] = tuple(int(x) for x in raw.split("/"))
            elif isinstance(fields[key].default, bool):
                if raw not in ("True", "False", "1", "0"):
                    raise ValueError(f"-ps {ps!r}: {key} must be True or False, got {raw!r}")
                values[key] = raw in ("True", "1")
            elif key == "embedding" and raw == "layersize":
                values[key] = -1
            else:
                values[key] = type(fields[key].default)(raw)
        if values.get("embedding") == -1:
            values["embedding"] = values.get("layers", cls.layers)[0]
        return cls(**values)


PRESETS: dict[str, GRU4RecConfig] = {
    # the paper under reimplementation (Table 2): the official defaults with 10 epochs, lr 0.05,
    # 2048 samples, batch 64
    "paper": GRU4RecConfig(
        layers=(100,), loss="cross-entropy", batch_size=64, learning_rate=0.05, n_sample=2048, n_epochs=10
    ),
    # the authors' published tuned settings for a large retail dataset (Rees46)
    "rees46_tuned": GRU4RecConfig(
        layers=(512,),
        loss="cross-entropy",
        constrained_embedding=True,
        batch_size=240,
        dropout_p_embed=0.45,
        dropout_p_hidden=0.0,
        learning_rate=0.065,
        momentum=0.0,
        n_sample=2048,
        sample_alpha=0.5,
        bpreg=0.0,
        logq=1.0,
        n_epochs=10,
    ),
    # the benchmark configuration of issue 3 (one layer of 100, batch 32, 2048 samples, XE + logQ)
    "benchmark": GRU4RecConfig(
        layers=(100,), loss="cross-entropy", batch_size=32, n_sample=2048, logq=1.0, learning_rate=0.05
    ),
    # small and quick, for the demo on a laptop
    "demo": GRU4RecConfig(
        layers=(64,),
        loss="cross-entropy",
        batch_size=64,
        n_sample=512,
        logq=1.0,
        learning_rate=0.05,
        n_epochs=3,
    ),
}


# ---------------------------------------------------------------------------------------------
# data: sessions as one item array with offsets
# ---------------------------------------------------------------------------------------------
@dataclass
class SessionData:
    """Sessions as one array of item indices (model vocabulary) with start offsets, in time order."""

    items: np.ndarray  # int64, all sessions concatenated
    offsets: np.ndarray  # int64, len = n_sessions + 1
    session_ids: np.ndarray | None = None

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        """Prediction events: every item after the first of its session."""
        return int(len(self.items) - self.n_sessions)


def build_sessions(
    session_id: np.ndarray,
    item: np.ndarray,
    order: np.ndarray,
    repeats: str = "collapse",
    min_length: int = 2,
) -> SessionData:
    """Group rows (already sorted by session then position) into sessions, ordered by ``order``
    (e.g. each session's first timestamp); consecutive repeats collapsed per ``repeats``."""
    session_id, item, order = np.asarray(session_id), np.asarray(item, np.int64), np.asarray(order)
    if len(item) == 0:
        return SessionData(np.empty(0, np.int64), np.zeros(1, np.int64))
    new = np.r_[True, session_id[1:] != session_id[:-1]]
    if repeats == "collapse":
        keep = new | (item != np.r_[-1, item[:-1]])
        session_id, item, order, new = session_id[keep], item[keep], order[keep], new[keep]
    starts = np.flatnonzero(new)
    lengths = np.diff(np.r_[starts, len(item)])
    ok = lengths >= min_length
    starts, lengths = starts[ok], lengths[ok]
    by_time = np.argsort(order[starts], kind="stable")
    starts, lengths = starts[by_time], lengths[by_time]
    idx = (
        np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        if len(starts)
        else np.empty(0, np.int64)
    )
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return SessionData(item[idx], offsets, session_id[starts])


def session_parallel_batches(
    data: SessionData, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(inputs, targets, reset, keep)`` per step of session-parallel training.

    ``reset`` marks the slots whose session started at this step (their hidden state must be
    zeroed before the step); ``keep`` marks, among the previous step's slots, those still in use
    (the batch shrinks when the sessions run out). Every event of every session is yielded once.
    """
    n = data.n_sessions
    if n == 0:
        return
    width = min(batch_size, n)
    slots = np.arange(width)  # session index per slot
    pos = data.offsets[slots].copy()  # current input position per slot
    end = data.offsets[slots + 1]
    next_session = width
    reset = np.ones(width, dtype=bool)
    keep = np.ones(width, dtype=bool)
    while True:
        yield data.items[pos], data.items[pos + 1], reset, keep
        pos = pos + 1
        done = pos + 1 >= end  # no next item left in these sessions
        reset = np.zeros(len(slots), dtype=bool)
        if done.any():
            k = int(done.sum())
            fresh = np.arange(next_session, min(next_session + k, n))
            next_session += len(fresh)
            finished = np.flatnonzero(done)
            refill, drop = finished[: len(fresh)], finished[len(fresh) :]
            slots[refill] = fresh
            pos[refill] = data.offsets[fresh]
            end[refill] = data.offsets[fresh + 1]
            reset[refill] = True
            keep = np.ones(len(slots), dtype=bool)
            keep[drop] = False
            if not keep.any():
                return
            slots, pos, end, reset = slots[keep], pos[keep], end[keep], reset[keep]
        else:
            keep = np.ones(len(slots), dtype=bool)


class SampleStore:
    """Pre-drawn negative samples on the device, drawn with probability ~ support ** alpha."""

    def __init__(
        self,
        support: np.ndarray,
        alpha: float,
        n_sample: int,
        store_size: int,
        device,
        generator: torch.Generator,
    ):
        p = np.asarray(support, np.float64) ** alpha
        self.probability = torch.tensor(p / p.sum(), dtype=torch.float32, device=device)
        self.cdf = torch.cumsum(self.probability.double(), 0).float()
        self.cdf[-1] = 1.0
        # the authors' logQ term for a sampled item: alpha * log(support), unnormalised
        self.log_weight = torch.tensor(
            alpha * np.log(np.asarray(support, np.float64)), dtype=torch.float32, device=device
        )
        self.n_sample = n_sample
        self.rows = max(1, store_size // max(n_sample, 1))
        self.device, self.generator = device, generator
        self._refill()

    def _refill(self) -> None:
        u = torch.rand(self.rows * self.n_sample, generator=self.generator, device=self.device)
        self.store = (
            torch.searchsorted(self.cdf, u, right=True)
            .clamp_(max=len(self.cdf) - 1)
            .view(self.rows, self.n_sample)
        )
        self.log_q = self.log_weight[self.store]  # the logQ correction, looked up once
        self.pointer = 0

    def draw(self) -> torch.Tensor:
        return self.draw_with_log_q()[0]

    def draw_with_log_q(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pointer >= self.rows:
            self._refill()
        out, log_q = self.store[self.pointer], self.log_q[self.pointer]
        self.pointer += 1
        return out, log_q


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def _uniform_init(t: torch.Tensor, scale0: float = 1.0, scale1: float = 1.0) -> None:
    sigma = math.sqrt(6.0 / (t.shape[0] / scale0 + t.shape[1] / scale1))
    with torch.no_grad():
        t.uniform_(-sigma, sigma)


def dense_rows(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return F.embedding(idx, weight)


class RowLookup:
    """Looks up rows of the item matrices for one training step as small leaf tensors.

    Each call takes the distinct rows once (``torch.unique``), so autograd sums the gradient of a
    row used several times; after ``backward`` the optimiser updates exactly those rows
    (:meth:`SparseAdagradM.step_rows`). This is GRU4Rec's sparse update without building and
    coalescing sparse gradient tensors.
    """

    def __init__(self):
        self.used: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        rows, inverse = torch.unique(idx, return_inverse=True)
        leaf = weight.detach().index_select(0, rows).requires_grad_()
        self.used.append((weight, rows, leaf))
        return F.embedding(inverse, leaf)  # its backward sums the gradient of repeated rows


class OneHotGRULayer(nn.Module):
    """The first GRU layer with one-hot input: its input matrix is an n_items x 3H row lookup.

    The cell is the authors' formula, not ``nn.GRUCell``'s: the reset gate scales the previous state
    *before* the recurrent matrix of the candidate, ``c = tanh(x W_c + (r * h) W_h)``, and the reset
    and update gates have their own recurrent matrix ``W_rz`` (H x 2H); there is one bias, on the
    input side.
    """

    def __init__(self, n_items: int, hidden: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.empty(n_items, 3 * hidden))  # candidate, reset, update
        self.Wrz = nn.Parameter(torch.empty(hidden, 2 * hidden))
        self.Wh = nn.Parameter(torch.empty(hidden, hidden))
        self.b = nn.Parameter(torch.zeros(3 * hidden))
        _uniform_init(self.Wx, scale1=3)
        _uniform_init(self.Wrz, scale1=2)
        _uniform_init(self.Wh)

    def forward(self, x: torch.Tensor, h: torch.Tensor, lookup=dense_rows) -> torch.Tensor:
        xc, xr, xz = (lookup(self.Wx, x) + self.b).chunk(3, 1)
        hr, hz = (h @ self.Wrz).chunk(2, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        cand = torch.tanh(xc + (r * h) @ self.Wh)
        return (1 - z) * h + z * cand


class GRU4RecNet(nn.Module):
    """Item matrices (``Wy``, ``By``, and ``E`` or the one-hot ``Wx``) are plain parameters read
    row by row; the GRU layers are dense."""

    def __init__(self, n_items: int, cfg: GRU4RecConfig):
        super().__init__()
        self.n_items, self.cfg = n_items, cfg
        layers = list(cfg.layers)
        self.one_hot = not cfg.constrained_embedding and cfg.embedding == 0
        if cfg.constrained_embedding:
            n_in = layers[-1]
        elif cfg.embedding:
            self.E = nn.Parameter(torch.empty(n_items, cfg.embedding))
            _uniform_init(self.E)
            n_in = cfg.embedding
        else:
            self.first = OneHotGRULayer(n_items, layers[0])
        start = 1 if self.one_hot else 0
        self.grus = nn.ModuleList(
            nn.GRUCell(layers[i - 1] if i > 0 else n_in, layers[i]) for i in range(start, len(layers))
        )
        for g in self.grus:
            _uniform_init(g.weight_ih, scale0=3)
            _uniform_init(g.weight_hh, scale0=3)
            nn.init.zeros_(g.bias_ih)
            nn.init.zeros_(g.bias_hh)
        self.Wy = nn.Parameter(torch.empty(n_items, layers[-1]))
        self.By = nn.Parameter(torch.zeros(n_items, 1))
        _uniform_init(self.Wy)
        self.drop_embed = nn.Dropout(cfg.dropout_p_embed)
        self.drop_hidden = nn.Dropout(cfg.dropout_p_hidden)

    def initial_state(self, batch: int, device) -> list[torch.Tensor]:
        return [torch.zeros(batch, h, device=device) for h in self.cfg.layers]

    def step(
        self, x: torch.Tensor, H: list[torch.Tensor], cand: torch.Tensor | None = None, lookup=dense_rows
    ):
        """One time step: the last layer's output, the new hidden states, and the output weights
        and biases of the candidate items ``cand`` (None: nothing to score)."""
        out_w = out_b = None
        if self.cfg.constrained_embedding:
            if cand is not None:
                both = lookup(self.Wy, torch.cat([x, cand]))
                e, out_w = both[: len(x)], both[len(x) :]
            else:
                e = lookup(self.Wy, x)
        elif not self.one_hot:
            e = lookup(self.E, x)
        if cand is not None:
            if out_w is None:
                out_w = lookup(self.Wy, cand)
            out_b = lookup(self.By, cand).squeeze(1)
        # dropout as the authors place it: the dropped-out output of a layer is also the state it
        # carries to the next step; with one-hot input the first layer's output takes the place of
        # the embedding (dropped with dropout_p_embed) and is that layer's next state
        H = list(H)
        if self.one_hot:
            h = self.drop_embed(self.first(x, H[0], lookup))
            H[0] = h
            offset = 1
        else:
            h = self.drop_embed(e)
            offset = 0
        for i, gru in enumerate(self.grus):
            h = self.drop_hidden(gru(h, H[i + offset]))
            H[i + offset] = h
        return h, H, out_w, out_b

    def scores(self, h: torch.Tensor, out_w: torch.Tensor, out_b: torch.Tensor) -> torch.Tensor:
        return h @ out_w.T + out_b


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def logq_terms(
    log_support: torch.Tensor, targets: torch.Tensor, sample_log_q: torch.Tensor | None
) -> torch.Tensor:
    """The logQ term of every candidate column: log(support) of the mini-batch's targets, then the
    samples' ``alpha * log(support)`` (from :class:`SampleStore`), unnormalised as in the authors'
    code (normalising would shift the sampled columns against the in-batch ones)."""
    own = log_support.index_select(0, targets)
    return own if sample_log_q is None else torch.cat([own, sample_log_q])


def cross_entropy_logq(scores: torch.Tensor, log_q: torch.Tensor | None, logq: float) -> torch.Tensor:
    """Summed cross-entropy with the targets on the diagonal of ``scores`` (rows x candidates)."""
    if logq > 0 and log_q is not None:
        scores = scores - logq * log_q
    return -torch.diagonal(F.log_softmax(scores, dim=1)).sum()


def bpr_max(scores: torch.Tensor, bpreg: float, elu_param: float) -> torch.Tensor:
    """Summed BPR-max: -log sum_j s_j sigmoid(r_i - r_j) + bpreg * sum_j s_j r_j^2, with s the
    softmax over the negatives (every candidate but the row's target)."""
    if elu_param > 0:
        scores = F.elu(scores, elu_param)
    n = scores.shape[0]
    target = torch.diagonal(scores).unsqueeze(1)
    neg_mask = torch.ones_like(scores)
    neg_mask[torch.arange(n), torch.arange(n)] = 0
    masked = scores.masked_fill(neg_mask == 0, float("-inf"))
    softmax = torch.softmax(masked, dim=1)
    bpr = -torch.log((torch.sigmoid(target - scores) * softmax).sum(dim=1) + 1e-24)
    reg = bpreg * (scores.pow(2) * softmax).sum(dim=1)
    return (bpr + reg).sum()


# ---------------------------------------------------------------------------------------------
# optimiser
# ---------------------------------------------------------------------------------------------
class SparseAdagradM(torch.optim.Optimizer):
    """Adagrad with momentum, dense or row by row.

    acc += g^2;  step = -lr * g / sqrt(acc + eps);  mom = momentum * mom + step;  p += mom
    (with momentum 0: p += step). :meth:`step` updates every parameter that has a gradient;
    :meth:`step_rows` updates only the given rows of an item matrix, with the state of those rows,
    which gives the same result as a dense step whose gradient is zero elsewhere, except that the
    untouched rows' momentum does not decay (as in the authors' implementation).
    """

    def __init__(self, params, lr: float = 0.05, momentum: float = 0.0, eps: float = 1e-6):
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["acc"] = torch.zeros_like(p)
                if momentum > 0:
                    self.state[p]["mom"] = torch.zeros_like(p)

    def _group(self, p):
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter not managed by this optimizer")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            accs = [self.state[p]["acc"] for p in params]
            torch._foreach_addcmul_(accs, grads, grads)
            denom = torch._foreach_sqrt(torch._foreach_add(accs, eps))
            steps = torch._foreach_div(grads, denom)
            torch._foreach_mul_(steps, -lr)
            if momentum > 0:
                moms = [self.state[p]["mom"] for p in params]
                torch._foreach_mul_(moms, momentum)
                torch._foreach_add_(moms, steps)
                steps = moms
            torch._foreach_add_(params, steps)

    @torch.no_grad()
    def step_rows(self, p: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """Update the distinct ``rows`` of ``p`` with their summed gradient ``grad``."""
        group = self._group(p)
        lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
        state = self.state[p]
        acc = state["acc"].index_select(0, rows).addcmul_(grad, grad)
        state["acc"].index_copy_(0, rows, acc)
        step = grad / acc.add_(eps).sqrt_()
        step.mul_(-lr)
        if momentum > 0:
            step = state["mom"].index_select(0, rows).mul_(momentum).add_(step)
            state["mom"].index_copy_(0, rows, step)
        p.index_add_(0, rows, step)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingHistory:
    epoch_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_events: list[int] = field(default_factory=list)

    @property
    def events_per_second(self) -> list[float]:
        return [e / s if s else 0.0 for e, s in zip(self.epoch_events, self.epoch_seconds, strict=True)]


class GRU4Rec:
    """A trained GRU4Rec over a vocabulary of catalogue items (``item_ids`` maps model index ->
    catalogue index, e.g. ``article_idx``)."""

    def __init__(self, cfg: GRU4RecConfig, item_ids: np.ndarray, support: np.ndarray, device="cpu"):
        self.cfg = cfg
        self.item_ids = np.asarray(item_ids, np.int64)
        self.support = np.asarray(support, np.float64)
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)
        self.net = GRU4RecNet(len(self.item_ids), cfg).to(self.device)
        self.optimizer = SparseAdagradM(self.net.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)
        self.history = TrainingHistory()
        self.epochs_done = 0
        self.name = "gru4rec"

    # -- vocabulary ------------------------------------------------------------------------------
    @classmethod
    def vocabulary(cls, catalogue_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model vocabulary from training rows: the distinct items (sorted) and their support."""
        ids, counts = np.unique(np.asarray(catalogue_items, np.int64), return_counts=True)
        return ids, counts

    def to_model_index(self, catalogue_items: np.ndarray) -> np.ndarray:
        """Model index of each catalogue item; -1 where the item was not seen in training."""
        catalogue_items = np.asarray(catalogue_items, np.int64)
        if len(self.item_ids) == 0:
            return np.full(len(catalogue_items), -1, np.int64)
        pos = np.clip(np.searchsorted(self.item_ids, catalogue_items), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == catalogue_items, pos, -1)

    # -- training ------------------------------------------------------------------------------
    def fit(
        self,
        data: SessionData,
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        on_epoch: Callable[[int, float, float], None] | None = None,
        max_epochs: int | None = None,
    ) -> TrainingHistory:
        """Train for ``cfg.n_epochs`` epochs (resuming after ``epochs_done``), checkpointing each epoch."""
        cfg = self.cfg
        stop = min(cfg.n_epochs, max_epochs if max_epochs is not None else cfg.n_epochs)
        log_p_batch = torch.tensor(
            np.log(self.support), dtype=torch.float32, device=self.device
        )  # unnormalised
        while self.epochs_done < stop:
            epoch = self.epochs_done
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000 + epoch)
            torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout
            store = None
            if cfg.n_sample > 0:  # never more pre-drawn rows than the epoch has steps
                size = min(cfg.sample_store_size, max(data.n_events, 1) * cfg.n_sample)
                store = SampleStore(self.support, cfg.sample_alpha, cfg.n_sample, size, self.device, gen)
            self.net.train()
            H = self.net.initial_state(min(cfg.batch_size, max(data.n_sessions, 1)), self.device)
            total, events, t0 = 0.0, 0, time.perf_counter()
            bar = tqdm(
                total=data.n_events,
                desc=f"gru4rec epoch {epoch + 1}/{cfg.n_epochs}",
                unit="ev",
                disable=not progress,
                mininterval=1.0,
            )
            for inputs, targets, reset, keep in session_parallel_batches(data, cfg.batch_size):
                if not keep.all():
                    k = torch.from_numpy(keep).to(self.device)
                    H = [h[k] for h in H]
                if reset.any():
                    r = torch.from_numpy(reset).to(self.device)
                    H = [h.masked_fill(r.unsqueeze(1), 0.0) for h in H]
                x = torch.from_numpy(inputs).to(self.device)
                y = torch.from_numpy(targets).to(self.device)
                sample, sample_log_q = store.draw_with_log_q() if store is not None else (None, None)
                cand = y if sample is None else torch.cat([y, sample])
                log_q = logq_terms(log_p_batch, y, sample_log_q) if cfg.logq > 0 else None
                H = [h.detach() for h in H]
                self.net.zero_grad(set_to_none=True)
                lookup = RowLookup()
                h, H, out_w, out_b = self.net.step(x, H, cand, lookup)
                scores = self.net.scores(h, out_w, out_b)
                if cfg.loss == "cross-entropy":
                    loss = cross_entropy_logq(scores, log_q, cfg.logq)
                else:
                    loss = bpr_max(scores, cfg.bpreg, cfg.elu_param)
                (loss / cfg.batch_size).backward()
                self.optimizer.step()
                for weight, rows, leaf in lookup.used:
                    self.optimizer.step_rows(weight, rows, leaf.grad)
                n = len(inputs)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"gru4rec: loss became {value} in epoch {epoch + 1}; lower the learning rate"
                    )
                total += value
                events += n
                bar.update(n)
            bar.close()
            seconds = time.perf_counter() - t0
            self.history.epoch_loss.append(total / max(events, 1))
            self.history.epoch_seconds.append(seconds)
            self.history.epoch_events.append(events)
            self.epochs_done += 1
            if checkpoint_dir is not None:
                self.save(Path(checkpoint_dir) / f"epoch-{self.epochs_done:03d}.pt")
            if on_epoch is not None:
                on_epoch(self.epochs_done, self.history.epoch_loss[-1], events / seconds if seconds else 0.0)
        return self.history

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": "hm_recs.gru4rec/1",
            "config": json.dumps(self.cfg.to_dict()),
            "item_ids": torch.from_numpy(self.item_ids),
            "support": torch.from_numpy(self.support),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epochs_done": self.epochs_done,
            "history": json.dumps(dataclasses.asdict(self.history)),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # a kill mid-save leaves the previous checkpoint intact
        return path

    @classmethod
    def load(cls, path: str | Path, device="cpu") -> GRU4Rec:
        """Load one of our own checkpoints (plain tensors and strings: ``weights_only=True``)."""
        state = torch.load(path, map_location=device, weights_only=True)
        if state.get("format") != "hm_recs.gru4rec/1":
            raise ValueError(f"{path}: not a hm_recs GRU4Rec checkpoint")
        model = cls(
            GRU4RecConfig.from_dict(json.loads(state["config"])),
            state["item_ids"].numpy(),
            state["support"].numpy(),
            device,
        )
        model.net.load_state_dict(state["net"])
        model.optimizer.load_state_dict(state["optimizer"])
        model.epochs_done = int(state["epochs_done"])
        model.history = TrainingHistory(**json.loads(state["history"]))
        return model

    @classmethod
    def latest_checkpoint(cls, checkpoint_dir: str | Path) -> Path | None:
        found = sorted(Path(checkpoint_dir).glob("epoch-*.pt"))
        return found[-1] if found else None

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def final_states(self, sequences: Sequence[np.ndarray], batch: int = 512) -> torch.Tensor:
        """Last-layer hidden state after feeding each sequence (model indices) from a zero state;
        an empty sequence gives the zero state."""
        self.net.eval()
        out = torch.zeros(len(sequences), self.cfg.layers[-1], device=self.device)
        lengths = np.array([len(s) for s in sequences])
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            longest = int(lengths[idx[0]]) if len(idx) else 0
            if longest == 0:
                continue
            H = self.net.initial_state(len(idx), self.device)
            last = torch.zeros(len(idx), self.cfg.layers[-1], device=self.device)
            # left-pad so every sequence ends at the last step; padded steps keep a zero state
            grid = np.zeros((len(idx), longest), np.int64)
            live = np.zeros((len(idx), longest), bool)
            for row, i in enumerate(idx):
                seq = sequences[i]
                if len(seq):
                    grid[row, longest - len(seq) :] = seq
                    live[row, longest - len(seq) :] = True
            for t in range(longest):
                x = torch.from_numpy(grid[:, t]).to(self.device)
                alive = torch.from_numpy(live[:, t]).to(self.device).unsqueeze(1)
                h, H2, _, _ = self.net.step(x, H)
                H = [torch.where(alive, new, old) for new, old in zip(H2, H, strict=True)]
                last = torch.where(alive, h, last)
            out[torch.from_numpy(idx).to(self.device)] = last
        return out

    @torch.no_grad()
    def score_states(self, states: torch.Tensor) -> torch.Tensor:
        return self.net.scores(states, self.net.Wy, self.net.By.squeeze(1))

    def evaluate_sessions(
        self,
        data: SessionData,
        ks: Sequence[int] = DEFAULT_KS,
        batch_size: int = 512,
        skipped: int = 0,
        keep_ranks: bool = False,
    ) -> dict:
        """The authors' protocol: every session from a zero state, each next item ranked against all
        training items with conservative ties; Recall@K and MRR@K averaged over events."""
        self.net.eval()
        ranks = []
        H = self.net.initial_state(min(batch_size, max(data.n_sessions, 1)), self.device)
        with torch.no_grad():
            for inputs, targets, reset, keep in session_parallel_batches(data, batch_size):
                if not keep.all():
                    k = torch.from_numpy(keep).to(self.device)
                    H = [h[k] for h in H]
                if reset.any():
                    r = torch.from_numpy(reset).to(self.device).unsqueeze(1)
                    H = [h.masked_fill(r, 0.0) for h in H]
                x = torch.from_numpy(inputs).to(self.device)
                y = torch.from_numpy(targets).to(self.device)
                h, H, _, _ = self.net.step(x, H)
                scores = self.score_states(h)
                target = scores.gather(1, y.unsqueeze(1))
                ranks.append((scores >= target).sum(dim=1).cpu().numpy())
        ranks = np.concatenate(ranks).astype(float) if ranks else np.empty(0)
        out = {"events": int(len(ranks)), "skipped_unseen": int(skipped)}
        for k in ks:
            out[f"Recall@{k}"] = float((ranks <= k).mean()) if len(ranks) else 0.0
            out[f"MRR@{k}"] = float(np.where(ranks <= k, 1.0 / ranks, 0.0).mean()) if len(ranks) else 0.0
        if keep_ranks:
            out["ranks"] = ranks
        return out


# ---------------------------------------------------------------------------------------------
# the shared protocol
# ---------------------------------------------------------------------------------------------
def top_k_deterministic(scores: torch.Tensor, k: int) -> np.ndarray:
    """Top-k columns per row by score, ties broken by column index (stable descending sort of the
    k + a margin best, falling back to a full stable sort for rows tied at the boundary)."""
    k = min(k, scores.shape[1])
    margin = min(scores.shape[1], k + 8)
    vals, idx = torch.topk(scores, margin, dim=1)
    out = np.empty((scores.shape[0], k), np.int64)
    kth = vals[:, k - 1 : k]
    boundary_ties = (scores == kth).sum(dim=1) > (vals == kth).sum(dim=1)
    for i in range(scores.shape[0]):
        if boundary_ties[i]:
            out[i] = torch.sort(scores[i], descending=True, stable=True).indices[:k].cpu().numpy()
        else:
            v, j = vals[i].cpu().numpy(), idx[i].cpu().numpy()
            out[i] = j[np.lexsort((j, -v))][:k]
    return out


class GRU4RecRecommender:
    """GRU4Rec on the shared protocol: ``session`` mode feeds only the current session (the paper's
    setting); ``warm`` mode feeds the customer's whole history before it (earlier weeks too)."""

    def __init__(self, model: GRU4Rec, mode: str = "session", name: str | None = None):
        if mode not in ("session", "warm"):
            raise ValueError(f"mode must be session or warm, got {mode!r}")
        self.model, self.mode = model, mode
        self.name = name or f"gru4rec_{mode}"

    def recommend(self, customers, histories, session_starts, k: int) -> np.ndarray:
        seqs = []
        for h, s in zip(histories, session_starts, strict=True):
            h = np.asarray(h if self.mode == "warm" else h[s:], np.int64)
            m = self.model.to_model_index(h)
            seqs.append(m[m >= 0])
        states = self.model.final_states(seqs)
        scores = self.model.score_states(states)
        top = top_k_deterministic(scores, k)
        return self.model.item_ids[top]


# ---------------------------------------------------------------------------------------------
# from the purchases table (hm_recs.sessions.purchases.load_purchases)
# ---------------------------------------------------------------------------------------------
def _rows(purchases, start=None, end=None):
    t = purchases["t_dat"].to_numpy().astype("datetime64[D]")
    keep = np.ones(len(t), bool)
    if start is not None:
        keep &= t >= np.datetime64(start, "D")
    if end is not None:
        keep &= t <= np.datetime64(end, "D")
    return purchases[keep].sort_values(["session_id", "t_dat", "event_idx"], kind="stable"), t[keep]


def training_data(purchases, cutoff, repeats: str = "collapse") -> tuple[SessionData, np.ndarray, np.ndarray]:
    """Sessions before ``cutoff`` in model indices, with the vocabulary (catalogue ids) and support."""
    import datetime as dt

    rows, _ = _rows(purchases, end=cutoff - dt.timedelta(days=1))
    items, support = GRU4Rec.vocabulary(rows["article_idx"].to_numpy())
    model_items = np.searchsorted(items, rows["article_idx"].to_numpy())
    order = rows["t_dat"].to_numpy().astype("datetime64[D]").astype(np.int64)
    data = build_sessions(rows["session_id"].to_numpy(), model_items, order, repeats)
    return data, items, support


def evaluation_data(
    model: GRU4Rec, purchases, start, end, repeats: str = "collapse"
) -> tuple[SessionData, int]:
    """The target week's sessions in model indices, and how many events had to be skipped because
    an item never appeared in training (such items are removed from the sessions, as in the
    authors' evaluation)."""
    rows, _ = _rows(purchases, start=start, end=end)
    sid = rows["session_id"].to_numpy()
    order = rows["t_dat"].to_numpy().astype("datetime64[D]").astype(np.int64)
    everything = build_sessions(sid, rows["article_idx"].to_numpy(), order, repeats)
    mapped = model.to_model_index(rows["article_idx"].to_numpy())
    seen = mapped >= 0
    data = build_sessions(sid[seen], mapped[seen], order[seen], repeats)
    return data, max(everything.n_events - data.n_events, 0)


def train_resumable(
    data: SessionData,
    items: np.ndarray,
    support: np.ndarray,
    cfg: GRU4RecConfig,
    checkpoint_dir: str | Path,
    fingerprint: str,
    device="cpu",
    progress: bool = True,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[GRU4Rec, bool]:
    """Train with a checkpoint per epoch; after a kill, the next call continues from the last
    finished epoch. ``fingerprint`` names the training data and configuration: checkpoints made
    for anything else are discarded, never resumed. Returns the model and whether it resumed."""
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "fingerprint.txt"
    if not stamp.exists() or stamp.read_text() != fingerprint:
        for old in folder.glob("epoch-*.pt"):
            old.unlink()
        stamp.write_text(fingerprint)
    latest = GRU4Rec.latest_checkpoint(folder)
    model = GRU4Rec.load(latest, device) if latest is not None else GRU4Rec(cfg, items, support, device)
    model.fit(data, checkpoint_dir=folder, progress=progress, on_epoch=on_epoch)
    return model, latest is not None


def load_fitted(store, target: str, device="cpu") -> GRU4Rec:
    """The model fitted for ``target`` from the model store (``hm_recs.artifacts``); the test week
    falls back to the validation model when no refit was trained for it."""
    from hm_recs.artifacts import gru4rec_key

    for name in (target, "validation") if target == "test" else (target,):
        if store.exists(f"{gru4rec_key(name)}/model.pt"):
            return GRU4Rec.load(store.pull(gru4rec_key(name)) / "model.pt", device)
    raise FileNotFoundError(
        f"no GRU4Rec model at {store.uri(gru4rec_key(target))}: materialize gru4rec_model first"
    )


@dataclass
class FittedGRU4Rec:
    target: str
    model: GRU4Rec
    resumed: bool
    sessions: int
    events: int
    items: int
    uri: str  # where ``model.pt`` is stored


def fit_stored(
    purchases,
    cutoffs: dict[str, object],
    cfg: GRU4RecConfig,
    store,
    data_version,
    device="cpu",
    log: Callable[[str], None] = print,
    on_epoch: Callable[[str, int, float, float], None] | None = None,
) -> Iterator[FittedGRU4Rec]:
    """One model per fit target (``target -> cutoff``, oldest first) through the model store: each
    epoch's checkpoint is pushed (a run killed in one worker resumes in another), then ``model.pt``."""
    from hm_recs.artifacts import gru4rec_key
    from hm_recs.training import fingerprint

    for target, cutoff in cutoffs.items():
        data, items, support = training_data(purchases, cutoff, cfg.repeats)
        key = fingerprint(cfg.to_dict(), str(cutoff), data_version, len(items))
        log(f"{target}: {data.n_sessions} sessions, {data.n_events} events, {len(items)} items, on {device}")

        def epoch_done(epoch, loss, rate, target=target):
            if on_epoch is not None:
                on_epoch(target, epoch, loss, rate)
            store.push(gru4rec_key(target))

        folder = store.pull(gru4rec_key(target))
        model, resumed = train_resumable(data, items, support, cfg, folder, key, device, on_epoch=epoch_done)
        model.save(folder / "model.pt")
        store.push(gru4rec_key(target))
        uri = f"{store.uri(gru4rec_key(target))}/model.pt"
        yield FittedGRU4Rec(target, model, resumed, data.n_sessions, data.n_events, len(items), uri)


PAPER_TABLE2 = {"Recall@20": 0.2532, "MRR@20": 0.1471}


def table2_markdown(rows: dict[str, dict]) -> str:
    """The authors' protocol per week in the paper's Table 2 layout, with the paper's numbers."""
    head = (
        "| week | events | skipped (unseen) | "
        + " | ".join(f"Recall@{k} | MRR@{k}" for k in DEFAULT_KS)
        + " |"
    )
    lines = [head, "|" + "---|" * (3 + 2 * len(DEFAULT_KS))]
    for week, r in rows.items():
        cells = " | ".join(f"{r[f'Recall@{k}']:.4f} | {r[f'MRR@{k}']:.4f}" for k in DEFAULT_KS)
        lines.append(f"| {week} | {r['events']} | {r['skipped_unseen']} | {cells} |")
    lines.append(
        f"\nThe paper (Table 2, full H&M data): Recall@20 {PAPER_TABLE2['Recall@20']}, MRR@20 "
        f"{PAPER_TABLE2['MRR@20']}."
    )
    return "\n".join(lines)

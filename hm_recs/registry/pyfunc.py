"""Trained models as MLflow ``pyfunc`` models.

A recommender's ``predict`` takes a frame of ``customer_id`` (and optionally ``history``, the
customer's purchases as article ids, oldest first, overriding the stored one) and returns
``customer_id, prediction`` with ``k`` (default 12) space-separated article ids (the Kaggle
submission row), ``source`` (``model`` or why the fallback answered) and ``ignored_history_ids``
(given ids not in the catalogue). A bad request (``k`` outside 1..catalogue size, a customer id
that is not one string) is a 400 whose message names the row and field. So
``mlflow models serve -m models:/hm_recs_recommender@champion --env-manager local``
answers recommendation requests over REST.

Every recommender bundle holds the catalogue (``article_idx -> article_id``), each known customer's
purchase history up to the end of the data, and a fallback ranking (time-decayed popularity):
a customer with no purchases, or one the model cannot score, gets the fallback, and every list
is filled up to ``k`` from it, so the answer is always ``k`` distinct real articles.

The ranker (``kind`` ``ranker``) serves lists ranked for every known customer at the start of the
week after the data (``lists.parquet``: customer_idx, customer_id, article_idx, rank), as the
Kaggle submission is made; a given ``history`` does not change them, and ``source`` says so.

The VQGAN is a pyfunc too: ``image_path`` in, ``tokens`` (space-separated codebook indices) and
``status`` out.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from hm_recs.data.schema import CUSTOMER_ID_PATTERN

KINDS = ("popularity", "gru4rec", "bart", "ranker")
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)
DEFAULT_K = 12


# ---------------------------------------------------------------------------------------------
# bundles: a folder with everything predict needs
# ---------------------------------------------------------------------------------------------
def write_recommender_bundle(
    folder: Path,
    kind: str,
    articles: pd.DataFrame,
    histories: pd.DataFrame,
    fallback: np.ndarray,
    settings: dict | None = None,
    files: dict[str, Path] | None = None,
) -> Path:
    """``articles``: article_idx, article_id; ``histories``: customer_id, history (article_idx list).
    ``files`` are copied in under their keys (a model file or folder)."""
    if kind not in KINDS:
        raise ValueError(f"unknown recommender kind {kind!r}: one of {KINDS}")
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    articles[["article_idx", "article_id"]].sort_values("article_idx").to_parquet(
        folder / "catalogue.parquet", index=False
    )
    histories[["customer_id", "history"]].to_parquet(folder / "histories.parquet", index=False)
    np.save(folder / "fallback.npy", np.asarray(fallback, np.int64))
    for key, src in (files or {}).items():
        src = Path(src)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, folder / key)
    (folder / "recommender.json").write_text(json.dumps({"kind": kind, "settings": settings or {}}, indent=1))
    return folder


def histories_frame(purchases: pd.DataFrame, customer_ids: Sequence[str]) -> pd.DataFrame:
    """Each customer's purchases (article_idx, oldest first) from the purchases table."""
    ordered = purchases.sort_values(["customer_idx", "t_dat", "event_idx"], kind="stable")
    cust = ordered["customer_idx"].to_numpy()
    starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]]) if len(cust) else np.empty(0, np.int64)
    items = np.split(ordered["article_idx"].to_numpy().astype(np.int32), starts[1:])
    ids = np.asarray(customer_ids, dtype=object)
    return pd.DataFrame(
        {"customer_id": ids[cust[starts]] if len(cust) else [], "history": items if len(cust) else []}
    )


def load_bundle_recommender(folder: Path, device: str = "cpu"):
    """The protocol ``Recommender`` a bundle describes."""
    folder = Path(folder)
    spec = json.loads((folder / "recommender.json").read_text())
    kind, settings = spec["kind"], spec["settings"]
    if kind == "popularity":
        from hm_recs.baselines.popularity import PopularityRecommender

        rec = PopularityRecommender(settings.get("variant", "all_time"))
        rec.ranking = np.load(folder / "ranking.npy")
        return rec
    if kind == "gru4rec":
        from hm_recs.models.gru4rec import GRU4Rec, GRU4RecRecommender

        return GRU4RecRecommender(GRU4Rec.load(folder / "model.pt", device), mode="warm")
    if kind == "bart":
        from hm_recs.models.bart import VARIANTS, SequenceCodec, load_bart
        from hm_recs.retrieval.bart_recommender import BartRecommender
        from hm_recs.retrieval.catalogue import CatalogueTables
        from hm_recs.retrieval.item_index import ItemIndex
        from hm_recs.retrieval.item_space import SPACE_KEY, space_from_settings

        catalogue = CatalogueTables.from_folder(folder).catalogue()
        tok, model, notes = load_bart(folder / "model", device)
        codec = SequenceCodec(catalogue, VARIANTS[settings["variant"]], tok, notes.get("max_source_tokens"))
        method = settings.get("grounding", "constrained")
        index = space = None
        if method == "nearest":
            index = ItemIndex(settings.get("index_uri") or str(folder / "lancedb"))
            space = space_from_settings(index.metadata(SPACE_KEY), device)
        cutoff = notes.get("trained_before")
        return BartRecommender(
            f"bart_{settings['variant']}",
            model,
            codec,
            method,
            settings.get("beams", 20),
            index,
            space,
            settings.get("generations", 4),
            trained_before=dt.date.fromisoformat(cutoff) if cutoff else None,
        )
    if kind == "ranker":
        from hm_recs.ranking.ranker import RankerRecommender

        return RankerRecommender(pd.read_parquet(folder / "lists.parquet"), np.load(folder / "fallback.npy"))
    raise ValueError(f"{folder}: unknown recommender kind {kind!r}")


class BundleRecommender:
    """customer ids (+ optional histories) -> k distinct article ids, with the fallback."""

    def __init__(self, folder: Path, device: str = "cpu"):
        folder = Path(folder)
        catalogue = pd.read_parquet(folder / "catalogue.parquet")
        self.article_ids = catalogue["article_id"].astype(str).to_numpy()
        self.index_of = {a: i for i, a in enumerate(self.article_ids)}
        hist = pd.read_parquet(folder / "histories.parquet")
        self.histories = dict(zip(hist["customer_id"].astype(str), hist["history"], strict=True))
        self.fallback = np.load(folder / "fallback.npy")
        self.model = load_bundle_recommender(folder, device)
        self.kind = json.loads((folder / "recommender.json").read_text())["kind"]
        self.listed: dict[str, int] = {}  # the ranker's customers: customer_id -> customer_idx
        if self.kind == "ranker":
            ids = pd.read_parquet(folder / "lists.parquet", columns=["customer_idx", "customer_id"])
            ids = ids.drop_duplicates("customer_idx")
            self.listed = dict(
                zip(ids["customer_id"].astype(str), ids["customer_idx"].astype(int), strict=True)
            )

    def known(self, customer_id: str) -> bool:
        return customer_id in self.histories

    def history_of(self, customer_id: str, override: Sequence[str] | None = None) -> np.ndarray:
        """The given history's catalogue indices (unknown ids dropped), else the stored one."""
        if override is not None and len(override) > 0:
            idx = [self.index_of.get(str(a), -1) for a in override]
            return np.asarray([i for i in idx if i >= 0], np.int64)
        return np.asarray(self.histories.get(customer_id, ()), np.int64)

    def recommend(
        self,
        customer_ids: Sequence[str],
        histories: Sequence[np.ndarray],
        k: int = DEFAULT_K,
        batch: int = 512,
    ) -> np.ndarray:
        """Catalogue indices, shape (n, k): the model's list, deduplicated, filled from the fallback."""
        n = len(customer_ids)
        out = np.empty((n, k), np.int64)
        warm = [i for i, h in enumerate(histories) if len(h) > 0]
        lists: dict[int, np.ndarray] = {}
        if self.kind == "ranker":  # lists made for the week, by customer
            rows = [i for i, c in enumerate(customer_ids) if c in self.listed]
            got = self.model.recommend([self.listed[customer_ids[i]] for i in rows], None, None, k)
            lists.update(zip(rows, got, strict=True))
            warm = []
        for s in range(0, len(warm), batch):
            rows = warm[s : s + batch]
            got = self.model.recommend(
                np.asarray(rows), [histories[i] for i in rows], np.zeros(len(rows), np.int64), k
            )
            lists.update(zip(rows, got, strict=True))
        for i in range(n):
            out[i] = _fill(lists.get(i, np.empty(0, np.int64)), self.fallback, k, len(self.article_ids))
        return out

    def predict_frame(self, frame: pd.DataFrame, k: int = DEFAULT_K) -> pd.DataFrame:
        """``customer_id, prediction, source, ignored_history_ids``: ``source`` says where a list
        comes from (``model``, or ``fallback`` with the reason: unknown customer, no history, no
        id), ``ignored_history_ids`` the ids of a given history that are not in the catalogue.
        Raises ``InvalidRequest`` (the message names the row and field) for a ``k`` outside
        1..catalogue size, a ``customer_id`` that is not one string, or a ``history`` that is not a
        list of strings."""
        k = validate_k(k, len(self.article_ids))
        if "customer_id" not in frame.columns:
            raise InvalidRequest(f"the request has no customer_id column (columns: {list(frame.columns)})")
        ids, sources, ignored, histories = [], [], [], []
        override = frame["history"].tolist() if "history" in frame.columns else [None] * len(frame)
        for row, (cid, given) in enumerate(zip(frame["customer_id"].tolist(), override, strict=True)):
            cid = _customer_id(cid, row)
            given = _history_ids(given, row)
            bad = [a for a in given or () if a not in self.index_of]
            history = self.history_of(cid or "", given)
            ids.append(cid or "")
            ignored.append(" ".join(bad))
            if self.kind == "ranker":
                sources.append(self._listed_source(cid, given))
            elif len(history):
                sources.append("model")
            elif cid is None:
                sources.append("fallback: no customer_id")
            elif given is None and not self.known(cid):
                sources.append("fallback: unknown customer")
            else:
                sources.append("fallback: no usable history")
            histories.append(history)
        top = self.recommend(ids, histories, k)
        return pd.DataFrame(
            {
                "customer_id": ids,
                "prediction": [" ".join(self.article_ids[row]) for row in top],
                "source": sources,
                "ignored_history_ids": ignored,
            }
        )

    def _listed_source(self, customer_id: str | None, given) -> str:
        if customer_id is None:
            return "fallback: no customer_id"
        if customer_id not in self.listed:
            if given is None and not self.known(customer_id):
                return "fallback: unknown customer"
            return "fallback: no ranked list for this customer"
        return "model: this week's ranked list (the given history is not used)" if given else "model"


class InvalidRequest(ValueError):
    """A request the recommender cannot answer; the message says which row and field."""


def validate_k(k, n_items: int) -> int:
    """``k`` as an int in 1..n_items, or InvalidRequest."""
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise InvalidRequest(f"k must be an integer, got {k!r}") from None
    if value != k and not isinstance(k, str) or not 1 <= value <= n_items:
        raise InvalidRequest(f"k must be an integer from 1 to {n_items} (the catalogue's size), got {k!r}")
    return value


def _customer_id(value, row: int) -> str | None:
    """A customer id as a string; None for a missing one; InvalidRequest for anything else."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            f"row {row}: customer_id must be one string, got {type(value).__name__} {str(value)[:80]}"
        )
    if not _CUSTOMER_ID.match(value):  # also catches a list MLflow's schema turned into "['...']"
        raise InvalidRequest(
            f"row {row}: customer_id must be 64 lowercase hex characters as in customers.csv, got "
            f"{value[:80]!r}"
        )
    return value


def _history_ids(value, row: int) -> list[str] | None:
    """A given history as a list of article-id strings (None or empty: use the stored one)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple | np.ndarray):
        raise InvalidRequest(f"row {row}: history must be a list of article ids, got {type(value).__name__}")
    items = list(value)
    if not all(isinstance(a, str) for a in items):
        raise InvalidRequest(f'row {row}: history must hold article ids as strings (e.g. "0108775015")')
    return items or None


def _fill(ranked: np.ndarray, fallback: np.ndarray, k: int, n_items: int) -> np.ndarray:
    seen, row = set(), []
    for i in list(ranked) + list(fallback):
        i = int(i)
        if 0 <= i < n_items and i not in seen:
            seen.add(i)
            row.append(i)
            if len(row) == k:
                break
    if len(row) < k:  # a catalogue smaller than the fallback's reach: complete in catalogue order
        row += [i for i in range(n_items) if i not in seen][: k - len(row)]
    return np.asarray(row, np.int64)


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow face of ``BundleRecommender``."""

    def load_context(self, context):
        self.recommender = BundleRecommender(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            return self.recommender.predict_frame(frame, (params or {}).get("k", DEFAULT_K))
        except InvalidRequest as exc:  # a 400 with this message, not a stack trace
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


class VQGANPyfunc(mlflow.pyfunc.PythonModel):
    """Image paths -> VQGAN tokens (space-separated codebook indices); unreadable images get a status."""

    def load_context(self, context):
        from hm_recs.models.vqgan import load_model

        self.model, _ = load_model(context.artifacts["weights"])
        self.model.eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from hm_recs.models.vqgan_training import tokenize_images

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        codes, _ = tokenize_images(self.model, frame["image_path"].astype(str).tolist(), progress=False)
        return pd.DataFrame(
            {
                "tokens": [
                    "" if c is None else " ".join(map(str, np.asarray(c).reshape(-1).tolist())) for c in codes
                ],
                "status": ["unreadable" if c is None else "ok" for c in codes],
            }
        )


# ---------------------------------------------------------------------------------------------
# signatures and logging
# ---------------------------------------------------------------------------------------------
def recommender_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", "customer_id"), ColSpec(Array("string"), "history", required=False)]
        ),
        outputs=Schema(
            [
                ColSpec("string", "customer_id"),
                ColSpec("string", "prediction"),
                ColSpec("string", "source"),
                ColSpec("string", "ignored_history_ids"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]),
    )


def vqgan_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image_path")]),
        outputs=Schema([ColSpec("string", "tokens"), ColSpec("string", "status")]),
    )


REQUIREMENTS = ["hm_recs", "mlflow", "torch", "numpy", "pandas", "pyarrow"]


def save_pyfunc(python_model, artifacts: dict[str, str], signature, path: Path) -> Path:
    """An MLflow model folder (no requirement inference: hm_recs is installed where it is served)."""
    import logging

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    level = logging.getLogger("mlflow.pyfunc").level
    logging.getLogger("mlflow.pyfunc").setLevel(
        logging.ERROR
    )  # the pickling notice: the class lives in hm_recs, not in the pickle
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example.*")  # the signature is explicit
            mlflow.pyfunc.save_model(
                str(path),
                python_model=python_model,
                artifacts=artifacts,
                signature=signature,
                pip_requirements=REQUIREMENTS,
            )
    finally:
        logging.getLogger("mlflow.pyfunc").setLevel(level)
    return path

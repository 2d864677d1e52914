"""Maps from a new model's space into an old model's space (Drift-Adapter, arXiv 2509.23471), fit on
paired vectors of the same texts: orthogonal Procrustes, low-rank affine, and a small residual MLP.

Each map is fit in numpy (the MLP trains with torch, then applies in numpy, so serving needs no torch),
outputs unit vectors, and saves as named arrays (`arrays()`, `load_map`)."""

from __future__ import annotations

import numpy as np

from embedding_assets.index.ann import unit_rows

SEED = 1_729  # fixed: the same pairs give the same map on every run
# The share of the fit pairs held out to choose the affine map's rank and ridge and the MLP's checkpoint
# (never the judged queries: those only measure retention).
TUNING_SHARE = 0.2
# (rank, ridge) of the affine correction tried: small ranks, the ridge relative to the mean feature energy.
AFFINE_CHOICES = tuple((rank, ridge) for rank in (16, 64) for ridge in (0.1, 1.0, 10.0, 100.0))
MLP_HIDDEN = 256  # units of the residual MLP's one hidden layer
MLP_EPOCHS = 400  # full-batch Adam steps at most; the held-out pairs pick the best checkpoint
MLP_CHECK_EVERY = 10  # steps between held-out checks
MLP_LEARNING_RATE = 1e-3
MLP_WEIGHT_DECAY = 1e-4


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The mean cosine similarity of matching rows."""
    return float(np.mean(np.sum(unit_rows(a) * unit_rows(b), axis=-1)))


def held_out_match(bridge: BridgeMap, new: np.ndarray, old: np.ndarray) -> float:
    """How often a mapped held-out vector's nearest old vector, among the held-out ones, is its own
    text's: a retrieval criterion for tuning, where cosine alone rewards maps that shrink the space."""
    similarities = bridge.apply(new) @ unit_rows(np.asarray(old, np.float32)).T
    return float(np.mean(np.argmax(similarities, axis=1) == np.arange(len(new))))


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) of n pairs: a fixed shuffle, TUNING_SHARE held out (at least one)."""
    order = np.random.default_rng(SEED).permutation(n)
    held = max(1, int(round(n * TUNING_SHARE)))
    return order[held:], order[:held]


class BridgeMap:
    """A fitted map from new-space vectors (rows) to unit vectors in the old space."""

    method: str

    @classmethod
    def fit(cls, new: np.ndarray, old: np.ndarray) -> BridgeMap:
        """The map fit on paired rows: `new[i]` and `old[i]` are the same text in each space."""
        raise NotImplementedError

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """The map's parameters, by name, as `load_map` reads them back."""
        raise NotImplementedError


class ProcrustesMap(BridgeMap):
    """x -> x W with W semi-orthogonal (WᵀW = I, or WWᵀ = I when the new space is the narrower):
    the orthogonal Procrustes solution W = U Vᵀ from the thin SVD of XᵀY. With equal dimensions it is
    the rotation (or reflection) closest to the cross-covariance; with unequal ones it is the same
    closed form on the Stiefel manifold, a learned orthonormal projection (768 -> 384 keeps the 384
    directions of the new space that best line up with the old), not least squares then orthogonalised."""

    method = "procrustes"

    def __init__(self, weight: np.ndarray):
        self.weight = np.asarray(weight, np.float32)

    @classmethod
    def fit(cls, new: np.ndarray, old: np.ndarray) -> ProcrustesMap:
        u, _, vt = np.linalg.svd(
            np.asarray(new, np.float64).T @ np.asarray(old, np.float64), full_matrices=False
        )
        return cls(u @ vt)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return unit_rows(vectors @ self.weight)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight}


class LowRankAffineMap(BridgeMap):
    """x -> (x - μ)(W + A B) + c: the Procrustes map W plus a rank-r correction A B and an offset, the
    correction fit by ridge regression on what W leaves unexplained (the ridge pulls the map back to W).
    Rank and ridge are chosen on held-out fit pairs (`held_out_match`), then the map is refit on all.

    An unconstrained least-squares map fits chunk pairs more closely (higher held-out cosine) but
    ranks judged queries worse than the rotation: it shrinks the directions it predicts poorly, and
    queries are not chunks. Starting from W and correcting little keeps the geometry."""

    method = "low-rank-affine"

    def __init__(
        self, mean: np.ndarray, rotation: np.ndarray, down: np.ndarray, up: np.ndarray, offset: np.ndarray
    ):
        self.mean, self.rotation, self.down, self.up, self.offset = (
            np.asarray(a, np.float32) for a in (mean, rotation, down, up, offset)
        )

    @classmethod
    def fit(cls, new: np.ndarray, old: np.ndarray) -> LowRankAffineMap:
        fit_rows, held = _split(len(new))

        def held_out(choice: tuple[int, float]) -> float:
            return held_out_match(cls._solve(new[fit_rows], old[fit_rows], *choice), new[held], old[held])

        return cls._solve(new, old, *max(AFFINE_CHOICES, key=held_out))

    @classmethod
    def _solve(cls, new: np.ndarray, old: np.ndarray, rank: int, ridge: float) -> LowRankAffineMap:
        x, y = np.asarray(new, np.float64), np.asarray(old, np.float64)
        mean, offset = x.mean(axis=0), y.mean(axis=0)
        xc = x - mean
        rotation = ProcrustesMap.fit(new, old).weight.astype(np.float64)
        unexplained = (y - offset) - xc @ rotation
        gram = xc.T @ xc
        strength = ridge * np.trace(gram) / len(gram)
        correction = np.linalg.solve(gram + strength * np.eye(len(gram)), xc.T @ unexplained)
        _, _, vt = np.linalg.svd(xc @ correction, full_matrices=False)
        directions = vt[: min(rank, len(vt))]
        return cls(mean, rotation, correction @ directions.T, directions, offset)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        centred = vectors - self.mean
        return unit_rows(centred @ self.rotation + centred @ self.down @ self.up + self.offset)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "rotation": self.rotation,
            "down": self.down,
            "up": self.up,
            "offset": self.offset,
        }


class ResidualMlpMap(BridgeMap):
    """x -> x W + relu(x W1 + b1) W2 + b2, the skip W starting at the Procrustes solution and the MLP
    at zero, trained with torch (fixed seed) to maximise cosine similarity with the old vectors; the
    checkpoint best on held-out fit pairs (`held_out_match`, the untrained start included) is kept, and
    it applies in numpy."""

    method = "residual-mlp"

    def __init__(self, skip: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray):
        self.skip, self.w1, self.b1, self.w2, self.b2 = (
            np.asarray(a, np.float32) for a in (skip, w1, b1, w2, b2)
        )

    @classmethod
    def fit(cls, new: np.ndarray, old: np.ndarray) -> ResidualMlpMap:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # matrices this small train faster on one core, and alike on every machine
        try:
            return cls._train(new, old)
        finally:
            torch.set_num_threads(threads)

    @classmethod
    def _train(cls, new: np.ndarray, old: np.ndarray) -> ResidualMlpMap:
        import torch

        torch.manual_seed(SEED)
        fit_rows, held = _split(len(new))
        x, y = (torch.from_numpy(np.asarray(a, np.float32)) for a in (new, old))
        d_in, d_out = x.shape[1], y.shape[1]
        skip = torch.nn.Parameter(
            torch.from_numpy(ProcrustesMap.fit(new[fit_rows], old[fit_rows]).weight.copy())
        )
        hidden, out = torch.nn.Linear(d_in, MLP_HIDDEN), torch.nn.Linear(MLP_HIDDEN, d_out)
        torch.nn.init.zeros_(out.weight)
        torch.nn.init.zeros_(out.bias)
        params = [skip, *hidden.parameters(), *out.parameters()]
        optimizer = torch.optim.AdamW(params, lr=MLP_LEARNING_RATE, weight_decay=MLP_WEIGHT_DECAY)

        def forward(rows: torch.Tensor) -> torch.Tensor:
            return rows @ skip + out(torch.relu(hidden(rows)))

        def snapshot() -> ResidualMlpMap:
            return cls(
                *(
                    p.detach().numpy().copy()
                    for p in (skip, hidden.weight.T, hidden.bias, out.weight.T, out.bias)
                )
            )

        best = snapshot()
        best_score = held_out_match(best, new[held], old[held])
        for step in range(1, MLP_EPOCHS + 1):
            optimizer.zero_grad()
            loss = 1 - torch.nn.functional.cosine_similarity(forward(x[fit_rows]), y[fit_rows]).mean()
            loss.backward()
            optimizer.step()
            if step % MLP_CHECK_EVERY == 0:
                candidate = snapshot()
                score = held_out_match(candidate, new[held], old[held])
                if score > best_score:
                    best, best_score = candidate, score
        return best

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        residual = np.maximum(vectors @ self.w1 + self.b1, 0) @ self.w2 + self.b2
        return unit_rows(vectors @ self.skip + residual)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"skip": self.skip, "w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}


METHODS: dict[str, type[BridgeMap]] = {
    cls.method: cls for cls in (ProcrustesMap, LowRankAffineMap, ResidualMlpMap)
}


def load_map(method: str, arrays: dict[str, np.ndarray]) -> BridgeMap:
    """The map `arrays()` saved, by its method name."""
    if method not in METHODS:
        raise ValueError(f"unknown bridge method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method](**arrays)

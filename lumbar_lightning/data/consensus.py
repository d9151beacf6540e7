"""How several raters' calls on an image become one soft target: their vote shares, or a Dawid-Skene latent truth.

Both models read a vote matrix (one row per image, one column per rater, the class index each rater gave, -1
where a rater gave none) and return, per image, a probability over the classes. ``LabelTable.consensus`` turns
that into the consensus rows a consensus classifier (Cc) learns from; the hard call is its most probable class,
ties going to the last class (rootlet over cord, the more severe grade: the side a missed stenosis lies on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Marks "this rater gave no call on this image" in a vote matrix.
NO_VOTE = -1


def vote_matrix(labels: list[list[str]], classes: tuple[str, ...]) -> np.ndarray:
    """Class indices of each image's (rows) calls by each rater (columns); empty or unknown calls are ``NO_VOTE``."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([[index.get(v, NO_VOTE) for v in row] for row in labels], dtype=np.int64).reshape(
        len(labels), -1
    )


def vote_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """(images, classes): how many raters gave each class."""
    counts = np.zeros((len(votes), num_classes))
    for column in votes.T:
        has = column != NO_VOTE
        counts[np.flatnonzero(has), column[has]] += 1.0
    return counts


def hard_calls(posterior: np.ndarray) -> np.ndarray:
    """The most probable class of each row, ties going to the last (the more severe) class."""
    k = posterior.shape[1]
    return k - 1 - np.argmax(posterior[:, ::-1], axis=1)


class VoteShares:
    """Each class's share of the raters who gave a call: every rater counts the same, nothing is fitted."""

    def posterior(self, votes: np.ndarray, num_classes: int, fit: np.ndarray | None = None) -> np.ndarray:
        counts = vote_counts(votes, num_classes)
        total = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


@dataclass
class DawidSkeneFit:
    """A fitted latent-truth model: the class prior and each rater's confusion matrix P(rater says l | truth k)."""

    prior: np.ndarray  # (classes,)
    confusion: np.ndarray  # (raters, classes, classes)
    iterations: int

    def posterior(self, votes: np.ndarray) -> np.ndarray:
        """P(truth | the image's calls) for each row of ``votes``; a row without calls gets the prior."""
        log_p = np.tile(np.log(self.prior), (len(votes), 1))
        log_confusion = np.log(self.confusion)
        for r, column in enumerate(votes.T):
            has = column != NO_VOTE
            log_p[has] += log_confusion[r][:, column[has]].T
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        return p / p.sum(axis=1, keepdims=True)


class DawidSkene:
    """Dawid & Skene (1979): a latent true class per image, and per rater a confusion matrix, fitted by EM.

    A rater who is reliable on a class gets more say there than one who is not, so where two raters disagree the
    target leans to the one whose calls on that class agree with the rest of the data. ``smoothing`` is a
    Dirichlet pseudo-count on the prior and on each confusion row (two raters and rare grades C and D leave some
    rows nearly empty); EM starts from the vote shares. Fitted on the training images only: the validation and
    test images get the posterior under that fit.
    """

    def __init__(self, smoothing: float = 1.0, max_iterations: int = 100, tolerance: float = 1e-6) -> None:
        # a plain class, not a dataclass: Hydra would turn a dataclass passed to instantiate() into a config
        self.smoothing, self.max_iterations, self.tolerance = (
            float(smoothing),
            int(max_iterations),
            float(tolerance),
        )

    def fit(self, votes: np.ndarray, num_classes: int) -> DawidSkeneFit:
        raters = votes.shape[1]
        t = VoteShares().posterior(votes, num_classes)
        voted = t.sum(axis=1) > 0
        votes, t = votes[voted], t[voted]
        if not len(votes):
            uniform = np.full(num_classes, 1.0 / num_classes)
            return DawidSkeneFit(uniform, np.full((raters, num_classes, num_classes), 1.0 / num_classes), 0)
        model = self._m_step(votes, t, num_classes)
        for iteration in range(1, self.max_iterations + 1):
            t_new = model.posterior(votes)
            model = self._m_step(votes, t_new, num_classes, iteration)
            change = float(np.abs(t_new - t).max())
            t = t_new
            if change < self.tolerance:
                break
        return model

    def _m_step(
        self, votes: np.ndarray, t: np.ndarray, num_classes: int, iteration: int = 0
    ) -> DawidSkeneFit:
        s = self.smoothing
        prior = (t.sum(axis=0) + s) / (len(t) + num_classes * s)
        confusion = np.empty((votes.shape[1], num_classes, num_classes))
        for r, column in enumerate(votes.T):
            has = column != NO_VOTE
            said = np.zeros((has.sum(), num_classes))
            said[np.arange(has.sum()), column[has]] = 1.0
            counts = t[has].T @ said + s  # (truth, said)
            confusion[r] = counts / counts.sum(axis=1, keepdims=True)
        return DawidSkeneFit(prior, confusion, iteration)

    def posterior(self, votes: np.ndarray, num_classes: int, fit: np.ndarray | None = None) -> np.ndarray:
        """Fit on the rows where ``fit`` is true (default: all), then the posterior of every row."""
        fitted = self.fit(votes if fit is None else votes[fit], num_classes)
        return fitted.posterior(votes)


#: What ``LabelTable.consensus`` and the data modules accept as a consensus model.
ConsensusModel = VoteShares | DawidSkene

"""The consensus models on small known cases: vote shares, one Dawid-Skene EM step by hand, recovery of known
rater confusions, and the fit seeing the training images only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lumbar_lightning.data.consensus import NO_VOTE, DawidSkene, VoteShares, hard_calls, vote_matrix


def test_vote_matrix_marks_missing_calls_and_shares_count_only_given_calls() -> None:
    votes = vote_matrix([["A", "B"], ["C", ""], ["", ""]], ("A", "B", "C", "D"))
    assert votes.tolist() == [[0, 1], [2, NO_VOTE], [NO_VOTE, NO_VOTE]]
    shares = VoteShares().posterior(votes, 4)
    assert shares.tolist() == [[0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert hard_calls(shares[:2]).tolist() == [1, 2]  # the tie goes to the more severe class


def test_one_em_step_matches_a_hand_computation() -> None:
    """Two raters, two classes, three images: the M step from the vote shares and the E step, by hand."""
    votes = np.array([[0, 0], [0, 1], [1, 1]])
    model = DawidSkene(smoothing=1.0, max_iterations=0)  # the M step from the vote shares only
    fit = model.fit(votes, 2)
    # from shares t = [[1, 0], [.5, .5], [0, 1]]: prior (1.5 + 1) / (3 + 2) each
    assert fit.prior == pytest.approx([0.5, 0.5])
    # rater 0 said [0, 0, 1]: truth-0 mass said 0: 1 + .5, said 1: 0 -> (2.5, 1) / 3.5; truth-1: said 0 .5, said 1 1
    assert np.allclose(fit.confusion[0], [[2.5 / 3.5, 1 / 3.5], [1.5 / 3.5, 2 / 3.5]])
    assert np.allclose(fit.confusion[1], [[2 / 3.5, 1.5 / 3.5], [1 / 3.5, 2.5 / 3.5]])
    # the E step: prior times each rater's P(said | truth)
    e = np.array([0.5 * (2.5 / 3.5) * (2 / 3.5), 0.5 * (1.5 / 3.5) * (1 / 3.5)])  # image 0: both said 0
    assert fit.posterior(votes[:1])[0] == pytest.approx(e / e.sum())
    assert fit.posterior(votes[1:2])[0] == pytest.approx([0.5, 0.5])  # the disagreement: symmetric here


def test_em_recovers_known_rater_confusions_and_beats_the_majority_vote() -> None:
    """Three raters of known reliability on 3,000 images: EM finds each one's overall accuracy (its confusion
    matrix's diagonal weighted by the fitted prior) within 3 points and the prior within 3, and its calls agree
    with the hidden truth more often than the majority's (ties to the more severe class)."""
    rng = np.random.default_rng(0)
    truth = rng.choice(4, size=3000, p=[0.6, 0.2, 0.12, 0.08])
    accuracy = [0.95, 0.75, 0.6]
    votes = np.empty((len(truth), 3), dtype=np.int64)
    for r, acc in enumerate(accuracy):
        wrong = rng.random(len(truth)) > acc
        votes[:, r] = np.where(wrong, (truth + rng.integers(1, 4, len(truth))) % 4, truth)
    fit = DawidSkene().fit(votes, 4)
    for r, acc in enumerate(accuracy):
        assert fit.prior @ np.diag(fit.confusion[r]) == pytest.approx(acc, abs=0.03)
    assert fit.prior == pytest.approx([0.6, 0.2, 0.12, 0.08], abs=0.03)
    latent = (hard_calls(fit.posterior(votes)) == truth).mean()
    majority = (hard_calls(VoteShares().posterior(votes, 4)) == truth).mean()
    assert latent > majority + 0.05


def test_the_fit_sees_only_the_rows_it_is_given() -> None:
    """Rows outside ``fit`` get the posterior under the fit of the others: changing their votes changes only
    their own posterior."""
    rng = np.random.default_rng(1)
    votes = rng.integers(0, 3, size=(200, 2))
    fit = np.arange(200) < 150
    model = DawidSkene()
    base = model.posterior(votes, 3, fit)
    changed = votes.copy()
    changed[150:] = (changed[150:] + 1) % 3
    moved = model.posterior(changed, 3, fit)
    assert np.array_equal(base[:150], moved[:150])
    assert not np.allclose(base[150:], moved[150:])


def test_agreeing_raters_give_their_call_whatever_the_model(tmp_path: Path) -> None:
    from lumbar_lightning.data.labels import CSV_COLUMNS, load_labels

    calls = (("1.1", "rootlet,C"), ("1.2", "rootlet,A"), ("1.3", "cord,"))
    rows = [f"{r},{uid},10,20,30,40,{call}," for uid, call in calls for r in ("A1", "A2")]
    (tmp_path / "labels.csv").write_text(",".join(CSV_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    table = load_labels(tmp_path / "labels.csv", {uid: (100, 120) for uid in ("1.1", "1.2", "1.3")})
    for model in (VoteShares(), DawidSkene()):
        rows = table.consensus(model)
        assert rows.loc[["1.1", "1.2", "1.3"], "grade"].tolist() == ["C", "A", ""]
        shares = rows.loc["1.1", [f"grade_share_{g}" for g in "ABCD"]].to_numpy(dtype=float)
        assert shares.argmax() == 2 and rows.loc["1.3", "rootlet_share"] < 0.5
        assert rows.loc["1.3", [f"grade_share_{g}" for g in "ABCD"]].sum() == 0.0


def test_dawid_skene_swapped_in_by_config_sets_the_consensus_targets(tiny_phantom: Path) -> None:
    """``data/consensus=dawid_skene`` reaches the grader's data module: its soft targets are the latent-truth
    posterior fitted on the fold's training images (not the vote shares), and its hard targets the posterior's
    most probable grade."""
    from lumbar_lightning.data.datamodules import PatchDataModule
    from lumbar_lightning.data.dataset import LumbarDataset
    from lumbar_lightning.engine.fold import patch_datamodule
    from tests.conftest import tiny_cv_config

    cfg = tiny_cv_config(f"data.data_dir={tiny_phantom}", "data/consensus=dawid_skene")
    dm = patch_datamodule(cfg, "grade", fold=0, rater="consensus")
    assert isinstance(dm, PatchDataModule) and isinstance(dm.consensus, DawidSkene)
    dm.setup()
    train = dm.rows["train"]
    dataset = LumbarDataset.ingest(tiny_phantom, None, salt=cfg.data.pseudonym_salt)
    fit_on = dataset.images.index[dataset.images["patient"].isin(dm.folds.split(0)["train"])]
    expected = dataset.labels.consensus(
        DawidSkene(), fit=dataset.images.loc[fit_on, "sop_instance_uid"].tolist()
    )
    shares = [f"grade_share_{g}" for g in "ABCD"]
    got = train.set_index("sop_instance_uid")[shares]
    assert np.allclose(got.to_numpy(), expected.loc[got.index, shares].to_numpy())
    votes = dataset.labels.consensus(VoteShares()).loc[got.index, shares].to_numpy()
    assert not np.allclose(got.to_numpy(), votes)  # the raters disagree somewhere, and EM weighs them
    assert (hard_calls(got.to_numpy()) == dm.targets(train)).all()


def test_a_consensus_checkpoint_follows_the_vote_share_its_call_gets(tiny_phantom: Path) -> None:
    """Under a consensus the monitored value is ``val/vote_acc``: the mean share of the raters' votes that each
    validation image's predicted grade gets (a split vote counts half whichever side is called), recomputed here
    from the module's own predictions; the tracked best is that value, not the tie-break accuracy."""
    import lightning as L
    import torch

    from lumbar_lightning.engine.fold import patch_datamodule
    from lumbar_lightning.models.stages import GradeClassifier
    from tests.conftest import quiet_trainer, tiny_cv_config

    cfg = tiny_cv_config(f"data.data_dir={tiny_phantom}")
    dm = patch_datamodule(cfg, "grade", fold=0, rater="consensus")
    dm.setup()
    L.seed_everything(0)
    module = GradeClassifier(width=0.125, scheduler=False)
    assert module.monitor == "val/acc"
    module.select_by_votes()
    trainer = quiet_trainer(limit_train_batches=2)
    trainer.fit(module, datamodule=dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    module.eval()
    shares, hits = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            pred = module.class_log_probs(module(batch["image"])).argmax(-1)
            shares.append(batch["soft_target"].gather(1, pred[:, None])[:, 0])
            hits.append(pred == batch["target"])
    vote_acc, acc = float(torch.cat(shares).mean()), float(torch.cat(hits).float().mean())
    assert logged["val/vote_acc"] == pytest.approx(vote_acc, abs=1e-6)
    assert logged["val/acc"] == pytest.approx(acc, abs=1e-6)
    assert float(module.val_best.compute()) == pytest.approx(vote_acc, abs=1e-6)

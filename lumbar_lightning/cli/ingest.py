"""``lumbar-ingest data_dir=DIR``: index, validate and cache a data set; write ``ingest_report.json``.

``lumbar-ingest format=rsna2024 source=DOWNLOAD data_dir=OUT`` first reads an RSNA 2024 download into the contract."""

from __future__ import annotations

import json
import time

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, log, output_dir
from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import activate, preset
from lumbar_lightning.data.rsna2024.ingest import ingest_rsna2024
from lumbar_lightning.io import atomic_write_text


def summary_lines(report: dict) -> list[str]:
    """The short human summary printed at the end of an ingestion."""
    lines = [
        f"images: {report['images']}  patients: {report['patients']}  series: {report['series']}",
        f"files decoded: {report['decoded_files']}  reused from cache: {report['cached_files']}",
        f"skipped files: {len(report['skipped_files'])}",
    ]
    lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped_files"][:20]]
    for rater, info in report["labels"].items():
        dist = report["grade_distribution"].get(rater, {})
        shares = " ".join(f"{g} {100 * v:.1f}%" for g, v in dist.items())
        lines.append(
            f"rater {rater}: {info['accepted']} rows accepted, {len(info['rejected'])} rejected; {shares}"
        )
        lines += [f"  line {r['line']}: {r['reason']}" for r in info["rejected"][:20]]
    lines.append(f"images labelled by every rater: {report['intersection_images']}")
    return lines


def convert(cfg: DictConfig) -> None:
    """``format=rsna2024 source=DIR``: read the download into the data contract in ``data_dir`` first (links, not
    copies), and grade it in its own scheme."""
    if cfg.get("format") in (None, "contract"):
        return
    if cfg.format != "rsna2024":
        raise DataContractError(
            f"format={cfg.format!r}: known formats are contract (the default) and rsna2024"
        )
    if not cfg.get("source"):
        raise DataContractError(
            "format=rsna2024 needs source=DIR: the folder holding train.csv and train_images/"
        )
    options = cfg.rsna2024
    converted = ingest_rsna2024(cfg.source, cfg.data_dir, options.rater, tuple(options.box_mm), options.link)
    activate(preset("rsna"))  # the converted labels are in the challenge's classes
    log.info(
        f"rsna2024: {converted.studies} studies, {len(converted.labels)} labelled levels, "
        f"{converted.linked_files} files linked, {len(converted.problems)} rows not used"
    )
    for p in converted.problems[:20]:
        log.info(f"  {p.file}" + (f" line {p.line}" if p.line else "") + f": {p.reason}")


def ingest(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    convert(cfg)
    dataset = LumbarDataset.ingest(cfg.data_dir, cfg.get("cache_dir"), salt=cfg.pseudonym_salt)
    report = dataset.report()
    report["seconds"] = round(time.perf_counter() - start, 3)
    out = output_dir()
    atomic_write_text(out / "ingest_report.json", json.dumps(report, indent=2))
    if cfg.get("num_folds"):
        try:
            dataset.folds(cfg.num_folds, cfg.split_seed).to_csv(out / "folds.csv")
        except DataContractError as exc:  # a small data set is still worth ingesting
            log.warning(f"no folds.csv: {exc}")
    for line in summary_lines(report):
        log.info(line)
    log.info(f"report: {out / 'ingest_report.json'}")
    return report


@hydra.main(config_path=CONF_PATH, config_name="ingest", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_contract_error(cfg):
        ingest(cfg)


if __name__ == "__main__":
    main()

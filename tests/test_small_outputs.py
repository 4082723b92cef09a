"""Numbers as a reader sees them: no spread printed for one seed, a slower case said to be slower."""

from hardneg.bench.loss_speed import format_table, speedup_text
from hardneg.report.report import results_table
from hardneg.report.stats import format_mean_std


def _row(label, seed, knn, lin):
    return {"label": label, "beta": None, "seed": seed, "knn_acc": knn, "linear_acc": lin, "align": 0.5,
            "uniform": -2.0, "seconds_last_session": 10.0}


def test_one_seed_prints_no_spread():
    # mean ± sample std (ddof 1) for several seeds: (0.5, 0.7) -> 60.00 ± 14.14; one seed -> the mean alone
    assert format_mean_std([0.5, 0.7], 100) == "60.00 ± 14.14"
    assert format_mean_std([0.8815], 100) == "88.15"
    assert format_mean_std([], 100) == "–"
    table = results_table([_row("ucl", 0, 0.8815, 0.9827), _row("scl", 0, 0.9, 0.95), _row("scl", 1, 0.92, 0.97)])
    ucl, scl = table.splitlines()[2:]
    assert ucl == "| ucl | – | 1 | 88.15 | 98.27 | 0.500 | -2.000 | 10 |"
    assert "±" in scl and "91.00 ± 1.41" in scl


def test_a_slower_case_reads_slower():
    assert speedup_text(2.0) == "2.0× faster"
    assert speedup_text(0.5) == "2.0× slower"
    assert speedup_text(None) == ""
    row = {"2B": 512, "case": "hardneg.ucl", "seconds": 0.004, "x_floor": 1.5, "peak_extra_bytes": 2**20,
           "speedup_vs_pml.SupConLoss": 0.5, "speedup_vs_pml.NTXentLoss": 4.0, "speedup_vs_torch.dense_supcon": 0.8}
    line = format_table([row]).splitlines()[-1]
    assert line.endswith("| 2.0× slower | 4.0× faster | 1.2× slower |")

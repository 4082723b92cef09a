"""The retrieval-compare tables: per-seed means and the dev-chosen (4) run, by hand computation."""

import json

from reproduce.wordnet_finetune import dev_choices, results_table, seeds_table


def _res(seed, vals):
    runs = {r: {"recall@1": 0.1, "recall@10": v + 0.2, "mrr@10": v, "ndcg@10": v, "dev": {"mrr@10": d},
                "steps": 10, "train_rows": 5, "train_s": 1.0} for r, (v, d) in vals.items()}
    return {"config": {"seed": seed}, "runs": runs}


def test_seeds_table_means_and_dev_choice(tmp_path):
    a = _res(0, {"mnrl": (0.20, 0.21), "hardneg_mined": (0.22, 0.20), "hardneg_tilted": (0.30, 0.25)})
    b = _res(1, {"mnrl": (0.24, 0.23), "hardneg_mined": (0.26, 0.31), "hardneg_tilted": (0.20, 0.24)})
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    lines = seeds_table([str(pa), str(pb)]).splitlines()
    assert lines[0].count("seed") == 2
    mnrl = next(x for x in lines if x.startswith("| (1) mnrl"))
    assert "| 0.2000 | 0.2400 | 0.2200 | 0.4200 | 0.2200 |" in mnrl
    # mean dev: mined (0.20+0.31)/2 = 0.255 > tilted (0.25+0.24)/2 = 0.245 -> mined is both (3) and (4)
    assert "| hardneg_mined — (3) and (4), chosen on dev |" in seeds_table([str(pa), str(pb)])
    t = results_table(a)  # seed 0 alone: tilted has the best dev (4); mined is the only MNRL-trained one (3)
    assert "| hardneg_tilted — (4), chosen on dev |" in t and "| hardneg_mined — (3), chosen on dev |" in t
    assert dev_choices({"mnrl": 0.9, "hardneg_mid": 0.3, "hardneg_margin": 0.4}) == {"hardneg_margin": "(3) and (4)"}

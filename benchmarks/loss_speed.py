"""Loss speed and memory vs pytorch-metric-learning. Same as `hardneg bench loss`; see
hardneg/bench/loss_speed.py. Example: python benchmarks/loss_speed.py --sizes 512,2048,8192"""

from hardneg.bench.loss_speed import main

if __name__ == "__main__":
    main()

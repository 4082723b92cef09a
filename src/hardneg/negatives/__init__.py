"""hardneg.negatives"""

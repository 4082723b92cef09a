"""hardneg.eval"""

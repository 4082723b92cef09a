"""hardneg.mining"""

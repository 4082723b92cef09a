"""hardneg.report"""

"""hardneg.data"""

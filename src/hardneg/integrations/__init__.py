"""Adapters that let other training frameworks use hardneg's losses and strategies."""

"""Datasets: the synthetic generator and readers for the dataset formats edgekit trains and evaluates on."""

"""Pipelines that combine training, evaluation and extraction: module robust criticality, RiFT,
interpolation with a chosen α, the α curve and its selection rule."""

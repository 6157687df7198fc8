"""The intent pipeline: typed data, stages, classifiers, model catalog, prompt enhancement.

Nothing in this package knows about HTTP; `gateway` turns requests into pipeline calls.
"""

"""Agreement statistics between raters and classifiers, comparisons between runs, and figures."""

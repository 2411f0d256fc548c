"""`hopscope experiment`: change one factor at a time, measure every variant against a baseline,
report with confidence intervals (issue 11). A layer on top of `serve`, `bench`, `traces` and
`cluster`: it launches them, it does not duplicate them."""

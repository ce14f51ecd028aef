"""One source per attribute: observations, cross-checks and discrepancies (一数一源, 多源校核)."""

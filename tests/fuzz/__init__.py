"""Property-based fuzz tests (hypothesis): the parsers never raise undocumented errors."""

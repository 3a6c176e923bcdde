"""The preset search-space files (YAML), installed as `hiersearch.search_spaces`.

Each opens with its launch command; `hiersearch reproduce --preset NAME` and
`hiersearch search --space NAME` find them in any install.
"""

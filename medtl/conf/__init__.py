"""medtl's Hydra configuration tree, shipped inside the package (``pkg://medtl.conf``).

``conf/`` at the top of a checkout links here, so the config layout sits beside ``medtl/``'s code layout.
"""

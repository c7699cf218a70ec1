"""``kvmharness sweep``: the scenario matrix across kernel images.

- :mod:`.kernels`: the inputs (unpacked packages, images, .deb files, package
  names to fetch) resolved to bootable images, sorted by version;
- :mod:`.runner`: one kernel booted through ``bisect-kernel`` (a subprocess),
  its progress, the per-kernel cache;
- :mod:`.summary`: per-kernel records (the JSON-lines history) and the first
  kernel where each scenario changed (pure);
- :mod:`.report`: the text table and the HTML page, kernels as columns (pure).
"""

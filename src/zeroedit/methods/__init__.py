"""Methods: each a short file that reads like its paper's algorithm box (tficon.py, pnp.py, pix2pix_zero.py,
mip.py); the SD3/FLUX variant of each, where the algorithm differs, in *_flow.py, registered in
common.FLOW_VARIANTS by importing it here."""
from . import mip_flow, mip_refs, pix2pix_zero_flow, pnp_flow, tficon_flow  # noqa: F401 — register the flow variants

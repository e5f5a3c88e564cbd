"""Inversions, each pure: (backbone, model function, latents, times) -> trajectory."""
from .ddim import CONVENTIONS, ddim_invert, ddim_sample, ddim_step, ddim_timesteps, inverse_steps
from .dpm_solver import MultistepDPMSolverPP, VPSchedule, dpmpp_trajectory, x0_from_model

__all__ = ["CONVENTIONS", "ddim_invert", "ddim_sample", "ddim_step", "ddim_timesteps", "inverse_steps",
           "MultistepDPMSolverPP", "VPSchedule", "dpmpp_trajectory", "x0_from_model"]

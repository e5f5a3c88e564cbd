"""Inversions, each pure: (backbone, model function, latents, times) -> trajectory."""
from .ddim import ddim_invert, ddim_sample, ddim_step, ddim_timesteps
from .dpm_solver import MultistepDPMSolverPP, VPSchedule, dpmpp_trajectory, x0_from_model

__all__ = ["ddim_invert", "ddim_sample", "ddim_step", "ddim_timesteps", "MultistepDPMSolverPP", "VPSchedule",
           "dpmpp_trajectory", "x0_from_model"]

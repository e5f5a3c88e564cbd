"""Inversions, each pure: (backbone, model function, latents, times) -> trajectory; rectified-flow solvers
(euler, rf-solver, fireflow) in flow.py: (model function, latents, sigmas) -> trajectory."""
from .ddim import CONVENTIONS, ddim_invert, ddim_sample, ddim_step, ddim_timesteps, inverse_steps
from .dpm_solver import MultistepDPMSolverPP, VPSchedule, dpmpp_trajectory, x0_from_model
from .flow import SOLVERS as FLOW_SOLVERS, euler, fireflow, rf_solver, solver_calls

__all__ = ["CONVENTIONS", "ddim_invert", "ddim_sample", "ddim_step", "ddim_timesteps", "inverse_steps",
           "MultistepDPMSolverPP", "VPSchedule", "dpmpp_trajectory", "x0_from_model", "FLOW_SOLVERS", "euler",
           "rf_solver", "fireflow", "solver_calls"]

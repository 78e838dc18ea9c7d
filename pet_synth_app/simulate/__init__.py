"""Digital phantom cohort generator: BIDS T1w + FDG PET with known ground truth."""

from .cohort import CohortConfig, SubjectPlan, plan_cohort, write_cohort
from .phantom import (
    PhantomSubject,
    load_template_space,
    mni_points_to_t1w,
    pet_coregistration_error_mm,
    simulate_subject,
    t1w_points_to_mni,
)

__all__ = [
    "CohortConfig",
    "PhantomSubject",
    "SubjectPlan",
    "load_template_space",
    "mni_points_to_t1w",
    "pet_coregistration_error_mm",
    "plan_cohort",
    "simulate_subject",
    "t1w_points_to_mni",
    "write_cohort",
]

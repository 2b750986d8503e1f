"""Operations helpers: plant-wide upload of sink data, soak-test evaluation, test lines.

Not part of the frame path. Nothing here is imported by the inspection service; these modules
serve operators' commands (``lineguard sink-upload``), the hil/ soak test and the ops tests.
"""

"""Pose input for pose guiders: drawn hand poses from a pose folder, ComfyUI's POSE_KEYPOINT, or a procedural idle sway."""

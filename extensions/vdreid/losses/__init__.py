"""vdreid.losses"""

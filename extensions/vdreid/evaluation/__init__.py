"""vdreid.evaluation"""

"""vdreid.engine"""

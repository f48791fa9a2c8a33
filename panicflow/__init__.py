"""panicflow"""

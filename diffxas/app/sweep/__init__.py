"""app.sweep"""

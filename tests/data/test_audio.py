import numpy as np
import pytest
import soundfile as sf

from serkit.data.audio import load_audio, trim_silence
from serkit.errors import AudioError


def test_mono_16k_is_read_as_is(tmp_path, tone):
    path = tone(tmp_path / "a.wav", seconds=0.5)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    assert np.allclose(wave, sf.read(path, dtype="float32")[0])


def test_stereo_44k_is_averaged_and_resampled_not_refused(tmp_path, tone):
    path = tone(tmp_path / "s.wav", seconds=1.0, sr=44100, channels=2, freq=440.0)
    wave = load_audio(path)
    assert wave.shape == (16000,)
    # the 440 Hz tone survives resampling: its spectral peak is still at 440 Hz
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / wave.size - 440) < 2


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(AudioError, match=r"not found: .*nope\.wav"):
        load_audio(tmp_path / "nope.wav")


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio at all" * 10)
    with pytest.raises(AudioError, match=r"cannot decode audio file .*corrupt\.wav"):
        load_audio(path)


def test_truncated_file_is_a_clear_error(tmp_path, tone):
    path = tone(tmp_path / "t.wav", seconds=1.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header still promises 16000 frames
    with pytest.raises(AudioError, match=r"t\.wav is truncated"):
        load_audio(path)


def test_truncated_flac_is_a_clear_error(tmp_path, tone):
    path = tone(tmp_path / "t.flac", seconds=2.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(AudioError, match=r"t\.flac"):
        load_audio(path)


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav is empty"):
        load_audio(path)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError, match="zero.wav"):
        load_audio(zero_bytes)


def test_all_silent_file_is_a_clear_error(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav is silent"):
        load_audio(path)


def test_too_short_file_is_a_clear_error(tmp_path, tone):
    path = tone(tmp_path / "short.wav", seconds=0.01)
    with pytest.raises(AudioError, match=r"short\.wav is too short"):
        load_audio(path)


def test_trim_silence_cuts_quiet_ends_only():
    sr = 16000
    rng = np.random.default_rng(0)
    speech = 0.3 * rng.standard_normal(sr).astype(np.float32)
    wave = np.concatenate([1e-4 * rng.standard_normal(sr), speech, 1e-4 * rng.standard_normal(sr)]).astype(np.float32)
    trimmed = trim_silence(wave, top_db=40)
    assert abs(trimmed.size - sr) < 1024  # within two analysis frames of the loud second
    assert np.allclose(trim_silence(speech, top_db=40), speech)  # nothing quiet: unchanged


def test_a_folder_given_as_audio_is_called_a_folder_with_what_to_do_where_it_was_named(tmp_path):
    (tmp_path / "clips").mkdir()
    with pytest.raises(AudioError, match=r"clips is a folder, not an audio file; give the audio files in it \(e\.g\. .*clips/\*\.wav\)"):
        load_audio(tmp_path / "clips", named_in="command line")
    with pytest.raises(AudioError, match=r"clips is a folder, not an audio file; check the manifest's path column"):
        load_audio(tmp_path / "clips")


def test_files_named_on_the_command_line_are_not_told_about_a_manifest(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF1234WAVEnot really audio" * 8)
    for path, message in ((tmp_path / "nope.wav", r"audio file not found: .*nope\.wav; check the path$"),
                          (tmp_path / "bad.wav", r"cannot decode audio file .*bad\.wav .*give another file")):
        with pytest.raises(AudioError, match=message) as err:
            load_audio(path, named_in="command line")
        assert "manifest" not in str(err.value)
